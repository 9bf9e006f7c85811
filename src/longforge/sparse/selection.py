"""Quest's page selection, device-neutral: the rules every backend shares.

Criticality of page ``p`` for a query head ``q`` is the upper bound of ``q . k`` over the keys of
the page (Quest, arXiv 2406.10774): ``sum_d max(q_d * max_d, q_d * min_d)``, which needs no
element-wise max: it is ``[relu(q), min(q, 0)] . [max, min]`` (:func:`split_signs` times the
store's metadata rows). Backends compute these scores their own way (a matmul, a C loop, a Triton
kernel); what they do with them is here, once:

* ``selection="group"`` (default): a KV group's score for a page is the **max** over its query
  heads (a page critical to any head is kept; the max of upper bounds is an upper bound), and the
  group reads its top ``K = token_budget / page_size`` pages once (:func:`top_pages`);
* ``"rank"``: the group still reads K pages, but its heads take their best pages in turn
  (:func:`top_pages_by_rank`), so one head's loose bounds cannot fill every slot;
* ``"head"``: every query head takes its own top K pages, as Quest does on multi-head models;
  the group reads the union of its heads' pages once (:func:`union_pages`), up to G times as many,
  each head masked to its own.

In every case the last page (being written) is always kept, and pages that hold padding only
(left padding of a batch) never take a slot from a page of real tokens.
"""
from __future__ import annotations

import torch

from longforge.sparse.store import PagedKV

SELECTIONS = ("group", "rank", "head")


def check_selection(selection: str) -> None:
    if selection not in SELECTIONS:
        raise ValueError(f"selection={selection!r}: choose one of {SELECTIONS}")


def split_signs(qg: torch.Tensor) -> torch.Tensor:
    """``[relu(q), min(q, 0)]`` along the last dim: criticality is this times ``[max, min]``."""
    return torch.cat([qg.clamp(min=0), qg.clamp(max=0)], dim=-1)


def grouped(q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """Decode queries ``[B, H_q, D]`` as ``[B, H_kv, G, D]`` (the heads of each KV group)."""
    b, hq, d = q.shape
    return q.reshape(b, kv_heads, hq // kv_heads, d)


def criticality(q: torch.Tensor, store: PagedKV) -> torch.Tensor:
    """Per-head page criticality ``[B, H_kv, G, n_pages]`` (the plain matmul)."""
    q2 = split_signs(grouped(q, store.meta.shape[1])).to(store.meta.dtype)
    return torch.matmul(q2, store.meta[:, :, : store.n_pages].transpose(-1, -2))


def mask_pages(scores: torch.Tensor, page_ok: torch.Tensor | None) -> torch.Tensor:
    """Scores ``[B, ..., n_pages]`` with the pages that hold no attendable key (``page_ok
    [B, n_pages]`` False: left padding) at -inf, in place, so that they never take a slot
    from a page of real tokens."""
    if page_ok is not None:
        shape = (page_ok.shape[0],) + (1,) * (scores.dim() - 2) + (page_ok.shape[-1],)
        scores.masked_fill_(~page_ok.view(shape), float("-inf"))
    return scores


def top_pages(scores: torch.Tensor, budget_pages: int,
              page_ok: torch.Tensor | None = None) -> torch.Tensor:
    """Indices ``[..., K]`` of the best pages of ``scores [..., n]``; the last page (being
    written) always kept; pages of padding only last. Modifies ``scores`` in place."""
    mask_pages(scores, page_ok)[..., -1] = float("inf")
    return scores.topk(min(budget_pages, scores.shape[-1]), dim=-1, sorted=False).indices


def top_pages_by_rank(crit: torch.Tensor, budget_pages: int,
                      page_ok: torch.Tensor | None = None) -> torch.Tensor:
    """Indices ``[B, H_kv, K]`` from per-head criticality ``[B, H_kv, G, n]``: the group's heads
    take their best pages in turn (each head's first choice, then each head's second, ...;
    a page already taken is skipped) until K are chosen; the last page always kept.

    Like :func:`top_pages`, it sets the last page's scores to inf (and those of padding pages
    to -inf) in place."""
    mask_pages(crit, page_ok)[..., -1] = float("inf")
    g, n = crit.shape[-2:]
    k = min(budget_pages, n)  # the first K distinct pages in turn all lie in their head's top K
    top = crit.topk(k, dim=-1, sorted=True).indices  # [B, H_kv, G, k], best first
    r, h = torch.meshgrid(torch.arange(k, device=crit.device), torch.arange(g, device=crit.device),
                          indexing="xy")  # [G, k]: head h's choice of rank r comes at turn r*G+h
    turn = (r * g + h).expand_as(top)
    first = torch.full((*crit.shape[:-2], n), n * g, dtype=torch.long, device=crit.device)
    first.scatter_reduce_(-1, top.flatten(-2), turn.flatten(-2), "amin")
    return first.topk(k, dim=-1, largest=False, sorted=False).indices


def union_pages(top: torch.Tensor, n_pages: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The pages any head of a group chose, each once, ascending: ``top[B, H_kv, G, K]`` ->
    ``pages [B, H_kv, U]`` and ``mine [B, H_kv, G, U]`` (head g chose page u). U is the largest
    union in the batch; shorter rows are padded with pages no head attends (``mine`` False)."""
    flat = top.flatten(-2).sort(dim=-1).values  # [B, H_kv, G*K]
    dup = torch.zeros_like(flat, dtype=torch.bool)
    dup[..., 1:] = flat[..., 1:] == flat[..., :-1]
    order = (flat + dup * n_pages).sort(dim=-1).values  # each page once, then the repeats
    u = int((~dup).sum(-1).max())
    pad = order[..., :u] >= n_pages
    pages = order[..., :u] - pad * n_pages
    chosen = torch.zeros(*top.shape[:-1], n_pages, dtype=torch.bool, device=top.device)
    chosen.scatter_(-1, top, True)
    mine = torch.gather(chosen, -1, pages.unsqueeze(-2).expand(*top.shape[:-1], u))
    return pages, mine & ~pad.unsqueeze(-2)


def token_positions(pages: torch.Tensor, page_size: int) -> torch.Tensor:
    """Token index of each slot of the selected pages: ``[..., K]`` -> ``[..., K*P]``."""
    offs = torch.arange(page_size, device=pages.device)
    return (pages[..., None] * page_size + offs).flatten(-2)


def valid_keys(pages: torch.Tensor, store: PagedKV, key_mask: torch.Tensor | None,
               always: bool = False) -> torch.Tensor | None:
    """Bool ``[B, H_kv, K*P]``: the slots of the selected pages that hold a key that may be
    attended (written, not padding), or None when every slot may be (unless ``always``)."""
    P = store.page_size
    if key_mask is None and store.length % P == 0 and not always:
        return None
    pos = token_positions(pages, P)
    valid = pos < store.length
    if key_mask is not None:
        full = store.pad_mask(key_mask)
        b, h, t = pos.shape
        valid &= torch.gather(full, 1, pos.reshape(b, h * t)).view(b, h, t)
    return valid
