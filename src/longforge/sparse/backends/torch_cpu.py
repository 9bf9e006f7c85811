"""The fast PyTorch CPU backend (fp32, a few cores, memory-bound); every pass over memory counts.

* criticality: one batched matmul ``meta[B, H_kv, n, 2D] @ [relu(q), min(q, 0)]^T``. With the
  metadata on the left the matmul streams it row by row once (``q @ meta^T`` was ~2x slower);
  the result ``[B, H_kv, n, G]`` is reduced by max over the group's heads.
* gather: ``index_select`` of whole pages (``P*D`` contiguous floats each) from the flattened
  ``[B*H_kv*pages, P*D]`` view of K and of V into reused buffers -- the only copy, K*P*D floats
  per KV head, small enough to stay in the last-level cache for the two matmuls that follow.
* attention: keys on the left again (``attend(..., keys_first=True)``): scores
  ``[B, H_kv, K*P, G]``, softmax over keys; masks (partial last page, padding) are applied only
  when there is something to mask.

Dense decode over the same preallocated cache is the same matmul-softmax-matmul (no copies).
"""
from __future__ import annotations

import torch

from longforge.sparse.attention import attend
from longforge.sparse.backends.base import Backend
from longforge.sparse.selection import grouped, split_signs, valid_keys
from longforge.sparse.store import PagedKV


class TorchCPUBackend(Backend):
    name = "torch"

    def __init__(self):
        self._buffers: dict = {}

    def _buffer(self, name: str, shape: tuple, like: torch.Tensor) -> torch.Tensor:
        """A reused scratch tensor (a fresh multi-MiB allocation page-faults on every call)."""
        key = (name, like.dtype, like.device)
        n = 1
        for s in shape:
            n *= s
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < n:
            buf = self._buffers[key] = torch.empty(n, dtype=like.dtype, device=like.device)
        return buf[:n].view(shape)

    def gather(self, x: torch.Tensor, pages: torch.Tensor, page_size: int, name: str) -> torch.Tensor:
        """The selected pages of ``x[B, H, cap, D]`` as ``[B, H, K*P, D]`` (one copy, reused
        buffer)."""
        b, h, cap, d = x.shape
        per_head = cap // page_size
        base = torch.arange(b * h, device=pages.device).view(b, h, 1) * per_head
        flat = x.view(b * h * per_head, page_size * d)
        out = self._buffer(name, (pages.numel(), page_size * d), x)
        torch.index_select(flat, 0, (pages + base).flatten(), out=out)
        return out.view(b, h, pages.shape[-1] * page_size, d)

    def dense(self, q, store: PagedKV, scale, key_mask=None, softcap=None):
        b, hq, d = q.shape
        valid = None if key_mask is None else key_mask[:, None, : store.length, None].bool()
        out = attend(grouped(q, store.k.shape[1]), store.keys(), store.values(), valid, scale,
                     softcap, keys_first=True)
        return out.reshape(b, hq, d)

    def head_scores(self, q, store):
        return self.head_scores_keys_first(q, store).transpose(-1, -2).contiguous()

    def head_scores_keys_first(self, q, store):
        """``[B, H_kv, n_pages, G]``: metadata on the left of the matmul."""
        q2 = split_signs(grouped(q, store.meta.shape[1]).to(store.meta.dtype))  # [B, H_kv, G, 2D]
        return torch.matmul(store.meta[:, :, : store.n_pages], q2.transpose(-1, -2))

    def group_scores(self, q, store):
        return self.head_scores_keys_first(q, store).amax(dim=-1)

    def attend_pages(self, q, store, pages, scale, key_mask, softcap, mine=None):
        b, hq, d = q.shape
        P = store.page_size
        k, v = self.gather(store.k, pages, P, "k"), self.gather(store.v, pages, P, "v")
        valid = valid_keys(pages, store, key_mask)  # [B, H_kv, T] or None
        if mine is not None:  # [B, H_kv, T, G]: each head its own pages
            per_head = mine.repeat_interleave(P, dim=-1).transpose(-1, -2)
            valid = per_head if valid is None else per_head & valid[..., None]
        elif valid is not None:
            valid = valid[..., None]
        out = attend(grouped(q, store.k.shape[1]), k, v, valid, scale, softcap, keys_first=True)
        return out.reshape(b, hq, d)
