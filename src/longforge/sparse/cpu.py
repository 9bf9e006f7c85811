"""Fast CPU decode step for Quest and dense attention (fp32, a few cores, memory-bound).

Same contract as the reference in :mod:`longforge.sparse.ops`; every pass over memory is counted:

* criticality: one batched matmul ``meta[B, H_kv, n, 2D] @ [relu(q), min(q, 0)]^T``. With the
  metadata on the left the matmul streams it row by row once (``q @ meta^T`` was ~2x slower);
  the result ``[B, H_kv, n, G]`` is reduced by max over the group's heads.
* top-K over ``n`` page scores (tiny).
* gather: ``index_select`` of whole pages (``P*D`` contiguous floats each) from the flattened
  ``[B*H_kv*pages, P*D]`` view of K and of V into reused buffers -- the only copy, K*P*D floats
  per KV head, small enough to stay in the last-level cache for the two matmuls that follow.
* attention: keys on the left again, ``k_sel @ q^T`` -> scores ``[B, H_kv, K*P, G]``, softmax
  over keys, ``p^T @ v_sel``. Masks (partial last page, padding) are applied to the scores only
  when there is something to mask.

Dense decode over the same preallocated cache uses the same matmul-softmax-matmul (no copies).

Kernel ``"c"`` replaces the criticality matmul, the gather and the attention of the Quest step
by the two loops of :mod:`longforge.sparse.cpu_kernel`, which read the metadata and the selected
pages in place (fp32 only; other dtypes keep this path). Top-K, the page choice and the key
masks are the same code, so both kernels compute the same method. Dense decode is unchanged.

The setting (``LONGFORGE_CPU_KERNEL`` or :func:`set_kernel`) is ``"auto"`` by default: the C
kernel when it builds, otherwise the PyTorch one with a logged warning that says why (the
method is the same; only the speed differs). ``"c"`` or ``"torch"`` force one kernel; ``"c"``
raises if it cannot be built.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager

import torch

from longforge.sparse.store import PagedKV

log = logging.getLogger(__name__)

IMPLEMENTATIONS = ("torch", "c")  # what "auto" resolves to; the benchmarks time each
KERNELS = ("auto", *IMPLEMENTATIONS)
COMBINES = ("max", "rank")  # how a KV group's heads choose its pages (see ``_select``)
_KERNEL = {"name": os.environ.get("LONGFORGE_CPU_KERNEL", "auto")}
_AUTO: dict = {}  # "auto" resolved once per process

_BUFFERS: dict = {}


def set_kernel(name: str) -> None:
    """Choose the Quest CPU kernel: ``"auto"`` (default: ``"c"`` if it builds, else
    ``"torch"`` with a warning), ``"torch"``, or ``"c"`` (built now; raises
    ``cpu_kernel.KernelBuildError`` with the compiler's message if it cannot be built)."""
    if name not in KERNELS:
        raise ValueError(f"unknown CPU kernel {name!r}; choose one of {KERNELS}")
    if name == "c":
        from longforge.sparse import cpu_kernel

        cpu_kernel.library()
    _KERNEL["name"] = name


@contextmanager
def kernel(name: str):
    """``with cpu.kernel("c"): ...`` -- :func:`set_kernel` for a block, restored after."""
    old = _KERNEL["name"]
    set_kernel(name)
    try:
        yield
    finally:
        _KERNEL["name"] = old


def kernel_setting() -> str:
    """The setting as chosen: ``"auto"``, ``"torch"`` or ``"c"``."""
    name = _KERNEL["name"]
    if name not in KERNELS:
        raise ValueError(f"LONGFORGE_CPU_KERNEL={name!r}; choose one of {KERNELS}")
    return name


def get_kernel() -> str:
    """The kernel in use: ``"torch"`` or ``"c"`` (``"auto"`` resolved)."""
    name = kernel_setting()
    if name != "auto":
        return name
    if "name" not in _AUTO:
        from longforge.sparse import cpu_kernel

        try:
            cpu_kernel.library()
            _AUTO["name"] = "c"
        except cpu_kernel.KernelBuildError as exc:
            log.warning("Quest CPU kernel: using the PyTorch kernel (same method, slower) "
                        "because the C kernel cannot be built: %s", exc)
            _AUTO["name"] = "torch"
    return _AUTO["name"]


def _buffer(name: str, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """A reused scratch tensor (a fresh multi-MiB allocation page-faults on every call)."""
    key = (name, like.dtype, like.device)
    buf = _BUFFERS.get(key)
    n = 1
    for s in shape:
        n *= s
    if buf is None or buf.numel() < n:
        buf = _BUFFERS[key] = torch.empty(n, dtype=like.dtype, device=like.device)
    return buf[:n].view(shape)


def check_combine(combine: str) -> None:
    if combine not in COMBINES:
        raise ValueError(f"combine={combine!r}: choose one of {COMBINES}")


def split_signs(qg: torch.Tensor) -> torch.Tensor:
    """``[relu(q), min(q, 0)]`` along the last dim: criticality is this times ``[max, min]``."""
    return torch.cat([qg.clamp(min=0), qg.clamp(max=0)], dim=-1)


def head_scores(q: torch.Tensor, store: PagedKV) -> torch.Tensor:
    """Per-head page criticality ``[B, H_kv, n_pages, G]`` (metadata on the left)."""
    b, hq, d = q.shape
    hkv = store.meta.shape[1]
    q2 = split_signs(q.view(b, hkv, hq // hkv, d).to(store.meta.dtype))  # [B, H_kv, G, 2D]
    return torch.matmul(store.meta[:, :, : store.n_pages], q2.transpose(-1, -2))


def head_criticality(q: torch.Tensor, store: PagedKV) -> torch.Tensor:
    """Per-head page criticality ``[B, H_kv, G, n_pages]``, by the C loop when it is in use."""
    if _use_c(q, store):
        from longforge.sparse import cpu_kernel as ck

        b, hq, d = q.shape
        q2 = split_signs(q.reshape(b, store.k.shape[1], -1, d)).contiguous()
        return ck.group_criticality(q2, store.meta, store.n_pages, per_head=True)
    return head_scores(q, store).transpose(-1, -2).contiguous()


def page_scores(q: torch.Tensor, store: PagedKV) -> torch.Tensor:
    """Per-KV-group page criticality ``[B, H_kv, n_pages]`` (max over the group's heads)."""
    return head_scores(q, store).amax(dim=-1)


def mask_pages(scores: torch.Tensor, page_ok: torch.Tensor | None) -> torch.Tensor:
    """Scores ``[B, ..., n_pages]`` with the pages that hold no attendable key (``page_ok
    [B, n_pages]`` False: left padding) at -inf, in place, so that they never take a slot
    from a page of real tokens; the last page is then forced in by the callers."""
    if page_ok is not None:
        shape = (page_ok.shape[0],) + (1,) * (scores.dim() - 2) + (page_ok.shape[-1],)
        scores.masked_fill_(~page_ok.view(shape), float("-inf"))
    return scores


def top_pages(scores: torch.Tensor, budget_pages: int,
              page_ok: torch.Tensor | None = None) -> torch.Tensor:
    """Indices ``[B, H_kv, K]`` of the best pages; the last page (being written) always kept;
    pages of padding only (``page_ok`` False) last."""
    mask_pages(scores, page_ok)[..., -1] = float("inf")
    return scores.topk(budget_pages, dim=-1, sorted=False).indices


def top_pages_by_rank(crit: torch.Tensor, budget_pages: int,
                      page_ok: torch.Tensor | None = None) -> torch.Tensor:
    """Indices ``[B, H_kv, K]`` from per-head criticality ``[B, H_kv, G, n]``: the group's heads
    take their best pages in turn (each head's first choice, then each head's second, ...;
    a page already taken is skipped) until K are chosen; the last page always kept.

    The group still reads K pages, but every head's top pages are among them: with the max over
    heads, one head's loose upper bounds can fill all K slots. Like :func:`top_pages`, it sets
    the last page's scores to inf (and those of padding pages to -inf) in place."""
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


def gather(x: torch.Tensor, pages: torch.Tensor, page_size: int, name: str) -> torch.Tensor:
    """The selected pages of ``x[B, H, cap, D]`` as ``[B, H, K*P, D]`` (one copy, reused buffer)."""
    b, h, cap, d = x.shape
    per_head = cap // page_size
    base = torch.arange(b * h, device=pages.device).view(b, h, 1) * per_head
    flat = x.view(b * h * per_head, page_size * d)
    out = _buffer(name, (pages.numel(), page_size * d), x)
    torch.index_select(flat, 0, (pages + base).flatten(), out=out)
    return out.view(b, h, pages.shape[-1] * page_size, d)


def valid_keys(pages: torch.Tensor, store: PagedKV, key_mask: torch.Tensor | None):
    """Bool ``[B, H_kv, K*P]`` of gathered keys that may be attended, or None if all may."""
    P = store.page_size
    if key_mask is None and store.length % P == 0:
        return None
    pos = (pages[..., None] * P + torch.arange(P, device=pages.device)).flatten(-2)
    valid = pos < store.length
    if key_mask is not None:
        full = store.pad_mask(key_mask)
        b, h, t = pos.shape
        valid &= torch.gather(full, 1, pos.reshape(b, h * t)).view(b, h, t)
    return valid


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None,
           scale: float, softcap: float | None) -> torch.Tensor:
    """Softmax attention of ``q[B, H_kv, G, D]`` over ``k, v[B, H_kv, T, D]`` -> ``[B, H_kv, G, D]``.

    Keys on the left of both matmuls: ``k @ q^T`` streams ``k`` row by row; ``valid`` is a
    bool mask of the keys that may be attended: ``[B, H_kv, T]`` (or broadcastable) for all the
    group's heads, or ``[B, H_kv, T, G]`` per head.
    """
    s = torch.matmul(k, q.transpose(-1, -2))  # [B, H_kv, T, G]
    s.mul_(scale)
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    if valid is not None:
        s.masked_fill_(~(valid if valid.dim() == s.dim() else valid[..., None]), float("-inf"))
    p = torch.softmax(s, dim=-2, dtype=torch.float32).to(v.dtype)
    return torch.matmul(p.transpose(-1, -2), v)


def quest_decode(q: torch.Tensor, store: PagedKV, token_budget: int, scale: float,
                 key_mask: torch.Tensor | None = None, softcap: float | None = None,
                 combine: str = "max") -> torch.Tensor:
    """One Quest decode step on the CPU (contract of ``ops.quest_decode``)."""
    check_combine(combine)
    budget_pages = store.budget_pages(token_budget)
    if budget_pages is None:
        return dense_decode(q, store, scale, key_mask, softcap)
    if _use_c(q, store):
        out = _quest_decode_c(q, store, budget_pages, scale, key_mask, softcap, combine)
    else:
        b, hq, d = q.shape
        hkv = store.k.shape[1]
        pages = _select(q, store, budget_pages, combine, lambda: page_scores(q, store), key_mask)
        k = gather(store.k, pages, store.page_size, "k")
        v = gather(store.v, pages, store.page_size, "v")
        out = attend(q.view(b, hkv, hq // hkv, d), k, v, valid_keys(pages, store, key_mask),
                     scale, softcap).reshape(b, hq, d)
    return dense_rows(out, q, store, token_budget, scale, key_mask, softcap)


def quest_decode_per_head(q: torch.Tensor, store: PagedKV, token_budget: int, scale: float,
                          key_mask: torch.Tensor | None = None,
                          softcap: float | None = None) -> torch.Tensor:
    """Quest with pages chosen per query head (contract of ``ops.quest_decode_per_head``).

    Each head takes its own top-K pages; the group reads the union of its heads' pages once
    (:func:`union_pages`) and each head attends over its own pages only, through a per-head key
    mask."""
    P = store.page_size
    budget_pages = store.budget_pages(token_budget)
    if budget_pages is None:
        return dense_decode(q, store, scale, key_mask, softcap)
    b, hq, d = q.shape
    hkv = store.k.shape[1]
    qg = q.reshape(b, hkv, hq // hkv, d)
    top = top_pages(head_criticality(q, store), budget_pages, store.page_mask(key_mask))
    pages, mine = union_pages(top, store.n_pages)
    valid = mine.repeat_interleave(P, dim=-1)  # [B, H_kv, G, U*P]
    keys = valid_keys(pages, store, key_mask)
    if keys is not None:
        valid &= keys[:, :, None]
    if _use_c(q, store):
        from longforge.sparse import cpu_kernel as ck

        out = ck.sparse_attention(qg.contiguous(), store.k, store.v, pages, P, valid, scale,
                                  softcap)
    else:
        out = attend(qg, gather(store.k, pages, P, "k"), gather(store.v, pages, P, "v"),
                     valid.transpose(-1, -2), scale, softcap)
    return dense_rows(out.reshape(b, hq, d), q, store, token_budget, scale, key_mask, softcap)


def _use_c(q: torch.Tensor, store: PagedKV) -> bool:
    """The C kernel is chosen and takes these tensors (fp32, CPU)."""
    return q.device.type == "cpu" and get_kernel() == "c" and store.k.dtype == torch.float32 \
        and q.dtype == torch.float32


def _select(q: torch.Tensor, store: PagedKV, budget_pages: int, combine: str,
            group_scores, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Pages ``[B, H_kv, K]``: by ``group_scores()`` (max over the group's heads, computed by
    the calling kernel) or, for ``combine="rank"``, by :func:`top_pages_by_rank` over the
    per-head criticality; pages of padding only are never chosen before real ones."""
    page_ok = store.page_mask(key_mask)
    if combine == "rank":
        return top_pages_by_rank(head_criticality(q, store), budget_pages, page_ok)
    return top_pages(group_scores(), budget_pages, page_ok)


def dense_rows(out: torch.Tensor, q: torch.Tensor, store: PagedKV, token_budget: int,
               scale: float, key_mask: torch.Tensor | None, softcap: float | None,
               dense=None) -> torch.Tensor:
    """``out [B, H_q, D]`` of a sparse step, with the rows whose attendable keys fit the budget
    (``store.rows_that_fit``: short rows of a left-padded batch) attended densely instead, as a
    context that fits always is. ``dense``: the dense step to use (default :func:`dense_decode`)."""
    dense = dense or dense_decode
    for r in store.rows_that_fit(token_budget, key_mask):
        out[r:r + 1] = dense(q[r:r + 1], store.rows(r, r + 1), scale, key_mask[r:r + 1], softcap)
    return out


def _quest_decode_c(q: torch.Tensor, store: PagedKV, budget_pages: int, scale: float,
                    key_mask: torch.Tensor | None, softcap: float | None,
                    combine: str = "max") -> torch.Tensor:
    """The Quest step with the in-place C loops (same page choice and key masks as above)."""
    from longforge.sparse import cpu_kernel as ck

    b, hq, d = q.shape
    hkv = store.k.shape[1]
    qg = q.reshape(b, hkv, hq // hkv, d).contiguous()
    pages = _select(q, store, budget_pages, combine, lambda: ck.group_criticality(
        split_signs(qg), store.meta, store.n_pages), key_mask)
    out = ck.sparse_attention(qg, store.k, store.v, pages, store.page_size,
                              valid_keys(pages, store, key_mask), scale, softcap)
    return out.reshape(b, hq, d)


def dense_decode(q: torch.Tensor, store: PagedKV, scale: float,
                 key_mask: torch.Tensor | None = None, softcap: float | None = None) -> torch.Tensor:
    """Dense decode step over the preallocated cache (contract of ``ops.dense_decode``)."""
    b, hq, d = q.shape
    hkv = store.k.shape[1]
    valid = None if key_mask is None else key_mask[:, None, : store.length].bool()
    out = attend(q.view(b, hkv, hq // hkv, d), store.keys(), store.values(), valid, scale,
                 softcap)
    return out.reshape(b, hq, d)


def dense_sdpa(q: torch.Tensor, store: PagedKV, scale: float) -> torch.Tensor:
    """Dense decode step with ``scaled_dot_product_attention`` (the stock kernel, for comparison)."""
    b, hq, d = q.shape
    out = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, None], store.keys(), store.values(), scale=scale, enable_gqa=True)
    return out.reshape(b, hq, d)
