"""Quest decode-step operations: the plain-PyTorch reference and the dispatching entry points.

``quest_decode`` / ``dense_decode`` run the Triton kernels on CUDA (when
``longforge.sparse.triton_kernels`` imports) and the fast CPU path (``longforge.sparse.cpu``)
elsewhere. ``quest_decode_reference`` / ``dense_decode_reference`` and the helpers below are the
straightforward reference every fast path is tested against.

Shapes: ``q`` is ``[B, H_q, D]`` (one decode step), the store holds ``H_kv`` heads with
``G = H_q / H_kv`` query heads per KV group.

GQA choice: pages are selected **per KV group**, so each selected page is read once per group.
A group's score for a page is the **max** over its query heads of their criticality: a page that
is critical to any head of the group is kept (the max of per-head upper bounds is an upper bound
of max_g q_g.k for every key k in the page). ``quest_decode_per_head`` is the other choice, for
comparison: every query head takes its own top-K pages (as Quest does on multi-head models),
so a group reads the union of its heads' pages, up to G times as many.
"""
from __future__ import annotations

import torch

from longforge.sparse import cpu
from longforge.sparse.store import PagedKV


def criticality(q: torch.Tensor, meta: torch.Tensor, n_pages: int) -> torch.Tensor:
    """Per-head page criticality ``[B, H_kv, G, n_pages]``: sum_d max(q_d*max_d, q_d*min_d)."""
    b, hq, d = q.shape
    hkv = meta.shape[1]
    qg = q.view(b, hkv, hq // hkv, d)
    q2 = cpu.split_signs(qg).to(meta.dtype)
    return torch.matmul(q2, meta[:, :, :n_pages].transpose(-1, -2))


def select_pages(q: torch.Tensor, store: PagedKV, budget_pages: int,
                 combine: str = "max", key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Indices ``[B, H_kv, K]`` of the top-K pages per KV group; the last page is always kept,
    and pages holding no attendable key (``key_mask``: left padding) come after every other.

    ``combine``: ``"max"`` ranks pages by the max over the group's heads of their criticality;
    ``"rank"`` lets the heads take their best pages in turn (``cpu.top_pages_by_rank``).
    Callers handle a context that fits the budget (dense) before calling.
    """
    cpu.check_combine(combine)
    n = store.n_pages
    crit = criticality(q, store.meta, n)  # [B, H_kv, G, n]
    k = max(1, min(budget_pages, n))
    page_ok = store.page_mask(key_mask)
    if combine == "rank":
        return cpu.top_pages_by_rank(crit, k, page_ok)
    crit = cpu.mask_pages(crit.amax(dim=2), page_ok)  # [B, H_kv, n]
    crit[..., n - 1] = float("inf")
    return crit.topk(k, dim=-1, sorted=False).indices


def gather_pages(x: torch.Tensor, pages: torch.Tensor, page_size: int) -> torch.Tensor:
    """``x[B, H, cap, D]`` -> the selected pages ``[B, H, K*P, D]`` (a copy)."""
    b, h, cap, d = x.shape
    paged = x.view(b, h, cap // page_size, page_size, d)
    idx = pages[..., None, None].expand(-1, -1, -1, page_size, d)
    return torch.gather(paged, 2, idx).flatten(2, 3)


def token_positions(pages: torch.Tensor, page_size: int) -> torch.Tensor:
    """Token index of each gathered slot: ``[B, H, K*P]``."""
    offs = torch.arange(page_size, device=pages.device)
    return (pages[..., None] * page_size + offs).flatten(-2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None,
           scale: float, softcap: float | None = None) -> torch.Tensor:
    """Exact softmax attention of ``q[B, H_kv, G, D]`` over ``k, v [B, H_kv, T, D]``.

    ``valid`` is a bool ``[B, H_kv, T]`` (or broadcastable) mask of keys that may be attended.
    """
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    if valid is not None:
        s = s.masked_fill(~valid[:, :, None, :], float("-inf"))
    return torch.matmul(torch.softmax(s.float(), dim=-1).to(v.dtype), v)


def dense_decode_reference(q: torch.Tensor, store: PagedKV, scale: float,
                           key_mask: torch.Tensor | None = None, softcap: float | None = None) -> torch.Tensor:
    """Dense decode attention over the whole cache. ``key_mask``: bool ``[B, L]`` (True = attend)."""
    b, hq, d = q.shape
    hkv = store.k.shape[1]
    valid = None if key_mask is None else key_mask[:, None, : store.length]
    out = attend(q.view(b, hkv, hq // hkv, d), store.keys(), store.values(), valid, scale, softcap)
    return out.reshape(b, hq, d)


def quest_decode_reference(q: torch.Tensor, store: PagedKV, token_budget: int, scale: float,
                           key_mask: torch.Tensor | None = None,
                           softcap: float | None = None, combine: str = "max") -> torch.Tensor:
    """One Quest decode step (reference): select the critical pages per KV group, attend over them exactly.

    Dense when the context fits the budget (per row: the short rows of a left-padded batch
    too). A budget below one page still keeps the last page.
    """
    cpu.check_combine(combine)
    P = store.page_size
    budget_pages = store.budget_pages(token_budget)
    if budget_pages is None:
        return dense_decode_reference(q, store, scale, key_mask, softcap)
    b, hq, d = q.shape
    hkv = store.k.shape[1]
    pages = select_pages(q, store, budget_pages, combine, key_mask)
    k, v = gather_pages(store.k, pages, P), gather_pages(store.v, pages, P)
    pos = token_positions(pages, P)
    valid = pos < store.length
    if key_mask is not None:
        full = store.pad_mask(key_mask)[:, None, :].expand(-1, hkv, -1)
        valid &= torch.gather(full, 2, pos)
    out = attend(q.view(b, hkv, hq // hkv, d), k, v, valid, scale, softcap).reshape(b, hq, d)
    return cpu.dense_rows(out, q, store, token_budget, scale, key_mask, softcap,
                          dense=dense_decode_reference)


def quest_decode_per_head_reference(q: torch.Tensor, store: PagedKV, token_budget: int,
                                    scale: float, key_mask: torch.Tensor | None = None,
                                    softcap: float | None = None) -> torch.Tensor:
    """Quest with pages chosen **per query head** (reference): each head attends exactly over
    its own top-K pages by its own criticality (the last page always kept; dense when the
    context fits), gathered per head."""
    P = store.page_size
    budget_pages = store.budget_pages(token_budget)
    if budget_pages is None:
        return dense_decode_reference(q, store, scale, key_mask, softcap)
    n = store.n_pages
    b, hq, d = q.shape
    g = hq // store.k.shape[1]
    pages = cpu.top_pages(criticality(q, store.meta, n), budget_pages,
                          store.page_mask(key_mask)).view(b, hq, budget_pages)
    pos = token_positions(pages, P)  # [B, H_q, K*P]
    bi = torch.arange(b, device=q.device)[:, None, None]
    kv_head = (torch.arange(hq, device=q.device) // g)[None, :, None]
    k, v = store.k[bi, kv_head, pos], store.v[bi, kv_head, pos]  # [B, H_q, K*P, D]: copies
    valid = pos < store.length
    if key_mask is not None:
        valid &= store.pad_mask(key_mask)[bi, pos]
    out = attend(q.view(b, hq, 1, d), k, v, valid, scale, softcap).reshape(b, hq, d)
    return cpu.dense_rows(out, q, store, token_budget, scale, key_mask, softcap,
                          dense=dense_decode_reference)


def _triton():
    """``longforge.sparse.triton_kernels`` if it imports, else None."""
    try:
        from longforge.sparse import triton_kernels
    except Exception:  # no triton, or no usable GPU toolchain
        return None
    return triton_kernels


def quest_decode(q: torch.Tensor, store: PagedKV, token_budget: int, scale: float,
                 key_mask: torch.Tensor | None = None, softcap: float | None = None,
                 combine: str = "max") -> torch.Tensor:
    """One Quest decode step: select the critical pages per KV group, attend over them exactly.

    Dense when the context fits the budget. A budget below one page still keeps the last page.
    CUDA: the Triton kernels (the reference if they do not import); otherwise the CPU path.
    """
    if q.is_cuda:
        tk = _triton()
        if tk is not None:
            return tk.quest_decode_triton(q, store, token_budget, scale, key_mask, softcap, combine)
        return quest_decode_reference(q, store, token_budget, scale, key_mask, softcap, combine)
    return cpu.quest_decode(q, store, token_budget, scale, key_mask, softcap, combine)


def quest_decode_per_head(q: torch.Tensor, store: PagedKV, token_budget: int, scale: float,
                          key_mask: torch.Tensor | None = None,
                          softcap: float | None = None) -> torch.Tensor:
    """One Quest decode step with pages chosen per query head: each head attends over its own
    top-K pages; a group reads the union of its heads' pages. CPU: the fast path; CUDA: the
    Triton kernels (the reference if they do not import)."""
    if q.is_cuda:
        tk = _triton()
        if tk is not None:
            return tk.quest_decode_per_head_triton(q, store, token_budget, scale, key_mask,
                                                   softcap)
        return quest_decode_per_head_reference(q, store, token_budget, scale, key_mask, softcap)
    return cpu.quest_decode_per_head(q, store, token_budget, scale, key_mask, softcap)


def dense_decode(q: torch.Tensor, store: PagedKV, scale: float, key_mask: torch.Tensor | None = None,
                 softcap: float | None = None) -> torch.Tensor:
    """Dense decode attention over the whole cache. ``key_mask``: bool ``[B, L]`` (True = attend)."""
    if q.is_cuda:
        return dense_decode_reference(q, store, scale, key_mask, softcap)
    return cpu.dense_decode(q, store, scale, key_mask, softcap)
