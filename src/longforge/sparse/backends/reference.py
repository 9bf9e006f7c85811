"""The reference backend: Quest and dense decode in plain PyTorch, written to be read.

Every faster backend is tested against this one. It shares only the selection rules
(:mod:`longforge.sparse.selection`) with them; the gathers and the attention are its own, and
pages chosen per query head are gathered head by head (no union of a group's pages).
Shapes: ``q [B, H_q, D]`` (one decode step); the store holds ``H_kv`` heads, ``G = H_q / H_kv``
query heads per KV group.
"""
from __future__ import annotations

import torch

from longforge.sparse.attention import attend
from longforge.sparse.backends.base import Backend
from longforge.sparse.selection import criticality, grouped, token_positions, valid_keys
from longforge.sparse.store import PagedKV


def gather_pages(x: torch.Tensor, pages: torch.Tensor, page_size: int) -> torch.Tensor:
    """``x[B, H, cap, D]`` -> the selected pages ``[B, H, K*P, D]`` (a copy)."""
    b, h, cap, d = x.shape
    paged = x.view(b, h, cap // page_size, page_size, d)
    idx = pages[..., None, None].expand(-1, -1, -1, page_size, d)
    return torch.gather(paged, 2, idx).flatten(2, 3)


class ReferenceBackend(Backend):
    name = "reference"

    def dense(self, q, store: PagedKV, scale, key_mask=None, softcap=None):
        b, hq, d = q.shape
        valid = None if key_mask is None else key_mask[:, None, None, : store.length].bool()
        out = attend(grouped(q, store.k.shape[1]), store.keys(), store.values(), valid, scale,
                     softcap)
        return out.reshape(b, hq, d)

    def head_scores(self, q, store):
        return criticality(q, store)

    def attend_pages(self, q, store, pages, scale, key_mask, softcap, mine=None):
        b, hq, d = q.shape
        P = store.page_size
        k, v = gather_pages(store.k, pages, P), gather_pages(store.v, pages, P)
        valid = valid_keys(pages, store, key_mask, always=True)[:, :, None, :]  # [B, H_kv, 1, T]
        return attend(grouped(q, store.k.shape[1]), k, v, valid, scale, softcap).reshape(b, hq, d)

    def attend_head_pages(self, q, store, top, scale, key_mask, softcap):
        """Each query head's own pages, gathered for that head (copies)."""
        b, hq, d = q.shape
        g = hq // store.k.shape[1]
        pos = token_positions(top.reshape(b, hq, -1), store.page_size)  # [B, H_q, K*P]
        bi = torch.arange(b, device=q.device)[:, None, None]
        kv_head = (torch.arange(hq, device=q.device) // g)[None, :, None]
        k, v = store.k[bi, kv_head, pos], store.v[bi, kv_head, pos]  # [B, H_q, K*P, D]
        valid = pos < store.length
        if key_mask is not None:
            valid &= store.pad_mask(key_mask)[bi, pos]
        return attend(q.view(b, hq, 1, d), k, v, valid[:, :, None, :], scale,
                      softcap).reshape(b, hq, d)
