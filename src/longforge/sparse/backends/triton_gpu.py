"""The ``triton`` backend: Triton kernels for Quest decode on GPUs (fp16 / bf16 / fp32), GQA-aware.

Same layout as :mod:`longforge.sparse.store`: keys/values ``[B, H_kv, cap, D]`` (page ``p`` is
rows ``p*P .. p*P+P-1``), metadata ``[B, H_kv, pages, 2D]`` = ``[max | min]``.

Four steps, one idea each:

1. :func:`update_meta` -- per touched page, the element-wise max / min of its keys.
2. :func:`criticality` -- per page, ``sum_d max(q_d*max_d, q_d*min_d)`` for each query head
   of the KV group, reduced by max over the group (one selection per KV group).
3. top-K -- :mod:`longforge.sparse.selection` over the group scores (the last page forced in).
   The GQA ablations choose from per-head scores (a matmul): ``selection="rank"`` (heads take
   pages in turn) and ``"head"`` (each head its own pages; the group's union is read once, with
   a per-head mask in step 4).
4. :func:`sparse_attention` -- split-K flash-decoding over the selected pages: each program
   runs an online softmax over its share of pages for all G heads of its group, writing a
   partial (max, sum, accumulator); a small combine step merges the splits exactly.

Dense decode is step 4 over every page. Tested against the reference backend under
``TRITON_INTERPRET=1`` on CPU (``tests/sparse/backends/test_triton_gpu.py``). No GPU timing
has been measured for these kernels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from longforge.sparse.backends.base import Backend
from longforge.sparse.selection import criticality as head_criticality


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


# ----------------------------------------------------------------------------- 1. metadata
@triton.jit
def _update_meta_kernel(K, META, first_page, length,
                        skb, skh, skt, smb, smh, smp,
                        H: tl.constexpr, P: tl.constexpr, D: tl.constexpr):
    bh = tl.program_id(0)
    page = first_page + tl.program_id(1)
    b, h = bh // H, bh % H
    rows = page * P + tl.arange(0, P)
    cols = tl.arange(0, D)
    ok = rows < length
    ptr = K + b * skb + h * skh + rows[:, None] * skt + cols[None, :]
    k = tl.load(ptr, mask=ok[:, None], other=0.0).to(tl.float32)
    kmax = tl.max(tl.where(ok[:, None], k, float("-inf")), axis=0)
    kmin = tl.min(tl.where(ok[:, None], k, float("inf")), axis=0)
    out = META + b * smb + h * smh + page * smp
    tl.store(out + cols, kmax.to(META.dtype.element_ty))
    tl.store(out + D + cols, kmin.to(META.dtype.element_ty))


def update_meta(k: torch.Tensor, meta: torch.Tensor, page_size: int, first_page: int,
                length: int) -> None:
    """Recompute metadata of pages ``first_page .. ceil(length / P) - 1`` from the keys."""
    b, h, _, d = k.shape
    n = -(-length // page_size) - first_page
    if n <= 0:
        return
    _update_meta_kernel[(b * h, n)](k, meta, first_page, length,
                                    k.stride(0), k.stride(1), k.stride(2),
                                    meta.stride(0), meta.stride(1), meta.stride(2),
                                    H=h, P=page_size, D=d)


# ----------------------------------------------------------------------------- 2. criticality
@triton.jit
def _criticality_kernel(Q, META, OUT, n_pages,
                        sqb, sqh, smb, smh, smp, sob, soh,
                        H: tl.constexpr, G: tl.constexpr, BG: tl.constexpr,
                        D: tl.constexpr, BP: tl.constexpr):
    bh = tl.program_id(0)
    b, h = bh // H, bh % H
    pages = tl.program_id(1) * BP + tl.arange(0, BP)
    g = tl.arange(0, BG)
    cols = tl.arange(0, D)
    q = tl.load(Q + b * sqb + (h * G + g)[:, None] * sqh + cols[None, :],
                mask=(g < G)[:, None], other=0.0).to(tl.float32)          # [BG, D]
    pok = pages < n_pages
    base = META + b * smb + h * smh + pages[:, None] * smp + cols[None, :]
    kmax = tl.load(base, mask=pok[:, None], other=0.0).to(tl.float32)    # [BP, D]
    kmin = tl.load(base + D, mask=pok[:, None], other=0.0).to(tl.float32)
    pos, neg = tl.maximum(q, 0.0), tl.minimum(q, 0.0)
    s = tl.sum(pos[:, None, :] * kmax[None, :, :] + neg[:, None, :] * kmin[None, :, :], axis=2)
    s = tl.where((g < G)[:, None], s, float("-inf"))                     # [BG, BP]
    tl.store(OUT + b * sob + h * soh + pages, tl.max(s, axis=0), mask=pok)


def criticality(q: torch.Tensor, meta: torch.Tensor, n_pages: int, block_pages: int = 32):
    """Group criticality ``[B, H_kv, n_pages]`` (max over the group's heads), fp32."""
    b, hq, d = q.shape
    hkv = meta.shape[1]
    g = hq // hkv
    out = torch.empty(b, hkv, n_pages, device=q.device, dtype=torch.float32)
    grid = (b * hkv, triton.cdiv(n_pages, block_pages))
    _criticality_kernel[grid](q, meta, out, n_pages,
                              q.stride(0), q.stride(1),
                              meta.stride(0), meta.stride(1), meta.stride(2),
                              out.stride(0), out.stride(1),
                              H=hkv, G=g, BG=_pow2(g), D=d, BP=block_pages)
    return out


# ----------------------------------------------------------------------------- 4. attention
@triton.jit
def _sparse_attn_kernel(Q, K, V, PAGES, MASK, HMASK, ACC, M, L,
                        n_sel, per_split, length, scale, softcap,
                        sqb, sqh, skb, skh, skt, spb, sph, smask, shb, shh, shg,
                        sab, sah, sas, smb, smh, sms,
                        H: tl.constexpr, G: tl.constexpr, BG: tl.constexpr,
                        P: tl.constexpr, D: tl.constexpr,
                        HAS_MASK: tl.constexpr, HEAD_MASK: tl.constexpr, SOFTCAP: tl.constexpr):
    bh, split = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    g = tl.arange(0, BG)
    cols = tl.arange(0, D)
    offs = tl.arange(0, P)
    q = tl.load(Q + b * sqb + (h * G + g)[:, None] * sqh + cols[None, :],
                mask=(g < G)[:, None], other=0.0).to(tl.float32)          # [BG, D]
    m_i = tl.full([BG], float("-inf"), tl.float32)
    l_i = tl.zeros([BG], tl.float32)
    acc = tl.zeros([BG, D], tl.float32)
    kbase, vbase = K + b * skb + h * skh, V + b * skb + h * skh
    start = split * per_split
    for i in range(start, tl.minimum(start + per_split, n_sel)):
        page = tl.load(PAGES + b * spb + h * sph + i)
        rows = page * P + offs
        ok = rows < length
        if HAS_MASK:
            ok = ok & (tl.load(MASK + b * smask + rows, mask=ok, other=0) != 0)
        k = tl.load(kbase + rows[:, None] * skt + cols[None, :], mask=ok[:, None],
                    other=0.0).to(tl.float32)                             # [P, D]
        v = tl.load(vbase + rows[:, None] * skt + cols[None, :], mask=ok[:, None],
                    other=0.0).to(tl.float32)
        s = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale          # [BG, P]
        if SOFTCAP:
            s = softcap * (2.0 / (1.0 + tl.exp(-2.0 * s / softcap)) - 1.0)  # softcap*tanh(s/softcap)
        okg = ok[None, :]
        if HEAD_MASK:  # this head may attend this selected key
            okg = okg & (tl.load(HMASK + b * shb + h * shh + g[:, None] * shg + (i * P + offs)[None, :],
                                 mask=(g < G)[:, None], other=0) != 0)
        s = tl.where(okg, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        m_i = m_new
    gok = g < G
    tl.store(ACC + b * sab + (h * G + g)[:, None] * sah + split * sas + cols[None, :], acc,
             mask=gok[:, None])
    tl.store(M + b * smb + (h * G + g) * smh + split * sms, m_i, mask=gok)
    tl.store(L + b * smb + (h * G + g) * smh + split * sms, l_i, mask=gok)


def sparse_attention(q, k, v, pages, page_size: int, length: int, scale: float, key_mask=None,
                     softcap=None, pages_per_split: int = 8, head_mask=None):
    """Exact attention of ``q[B, H_q, D]`` over the pages ``pages[B, H_kv, K]`` of ``k, v``.

    ``key_mask``: bool ``[B, cap]`` (True = may attend) or None. ``head_mask``: bool
    ``[B, H_kv, G, K*P]``, which selected keys each query head may attend, or None (all).
    """
    b, hq, d = q.shape
    hkv, n_sel = k.shape[1], pages.shape[-1]
    g = hq // hkv
    splits = triton.cdiv(n_sel, pages_per_split)
    acc = torch.empty(b, hq, splits, d, device=q.device, dtype=torch.float32)
    m = torch.empty(b, hq, splits, device=q.device, dtype=torch.float32)
    l = torch.empty_like(m)
    pages = pages.contiguous()
    mask = key_mask.to(torch.int8).contiguous() if key_mask is not None else pages
    hmask = head_mask.to(torch.int8).contiguous() if head_mask is not None \
        else torch.zeros(1, 1, 1, 1, dtype=torch.int8, device=q.device)
    _sparse_attn_kernel[(b * hkv, splits)](
        q, k, v, pages, mask, hmask, acc, m, l, n_sel, pages_per_split, length, scale,
        softcap or 0.0, q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
        pages.stride(0), pages.stride(1), mask.stride(0), *hmask.stride()[:3],
        acc.stride(0), acc.stride(1), acc.stride(2), m.stride(0), m.stride(1), m.stride(2),
        H=hkv, G=g, BG=_pow2(g), P=page_size, D=d, HAS_MASK=key_mask is not None,
        HEAD_MASK=head_mask is not None, SOFTCAP=bool(softcap))
    return _combine(acc, m, l).to(q.dtype)


def _combine(acc: torch.Tensor, m: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Merge split partials: out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s."""
    mx = m.amax(dim=-1, keepdim=True)
    w = torch.exp(m - mx.masked_fill(mx == float("-inf"), 0.0))
    return (acc * w[..., None]).sum(-2) / (l * w).sum(-1, keepdim=True)


# ----------------------------------------------------------------------------- the backend
class TritonBackend(Backend):
    name = "triton"

    def dense(self, q, store, scale, key_mask=None, softcap=None):
        n = store.n_pages
        pages = torch.arange(n, device=q.device).expand(q.shape[0], store.k.shape[1], n)
        return self.attend_pages(q, store, pages, scale, key_mask, softcap)

    def group_scores(self, q, store):
        return criticality(q, store.meta, store.n_pages)

    def head_scores(self, q, store):
        return head_criticality(q, store)

    def attend_pages(self, q, store, pages, scale, key_mask, softcap, mine=None):
        head_mask = None if mine is None else mine.repeat_interleave(store.page_size, dim=-1)
        return sparse_attention(q, store.k, store.v, pages, store.page_size, store.length, scale,
                                store.pad_mask(key_mask), softcap, head_mask=head_mask)
