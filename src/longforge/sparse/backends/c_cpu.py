"""The ``c`` backend: a C/OpenMP kernel for the Quest CPU decode step; the pages are read in place.

The PyTorch backend (:mod:`.torch_cpu`) copies the selected pages into a buffer before two
matmuls, so the selected K/V cross memory three times (read, write, read back); the criticality
matmul and its max over the group are two passes. Two loops here read every byte once:

* :func:`group_criticality` -- ``scores[bh, p] = max_g q2[bh, g] . meta[bh, p]``: one pass over
  the metadata (prefetched 8 rows ahead), the group max fused in (or every head's score, for
  the GQA selection ablations);
* :func:`sparse_attention` -- for each selected page, in place: the scores of its ``P`` keys
  for the group's ``G`` heads, scale / softcap / key mask, an online-softmax update, and the
  weighted sum of its ``P`` values (flash-decoding), the next page prefetched meanwhile.

Top-K and the page choice are :mod:`longforge.sparse.selection`'s; the method is the
reference's exactly (equal up to fp32 rounding). The loops are written for throughput:
8-wide GCC vector types, two independent FMA chains per head, one shuffle tree for four dot
products, a vector ``exp`` (Cephes polynomial, ~1 ulp; exactly 0 below -87).

The default CPU backend when it builds (see :mod:`longforge.sparse.backends`). Dense decode and
other dtypes than fp32 run the PyTorch backend's code. It is plain C built once by
``$CC`` (default ``gcc``) into ``cache_dir()/kernels`` and loaded with ctypes: no torch headers,
so the build takes about a second (a ``torch.utils.cpp_extension`` build compiles the torch
headers), and torch's own libgomp, already loaded, runs its OpenMP loops on torch's threads.
A build failure raises :class:`KernelBuildError`; under ``auto`` it is logged as a warning and
the PyTorch backend (same method) is used; nothing falls back silently.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from longforge.models.paths import cache_dir
from longforge.sparse.backends.torch_cpu import TorchCPUBackend
from longforge.sparse.selection import grouped, split_signs, valid_keys

SOURCE = r"""
#include <math.h>
#include <stdint.h>

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));

static inline v8 ld(const float *p) { v8 v; __builtin_memcpy(&v, p, sizeof v); return v; }
static inline void st8(float *p, v8 v) { __builtin_memcpy(p, &v, sizeof v); }
static inline float hsum(v8 v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

static inline void prefetch(const float *p, int64_t n) {
    for (int64_t x = 0; x < n; x += 16) __builtin_prefetch(p + x, 0, 1);
}

/* out[g * os] = the sum of v[g]'s lanes, g < G <= 4: one shuffle-add tree for all four. */
static inline void hsum4(const v8 *v, int G, float *out, int os) {
    const vi8 ev = {0, 2, 8, 10, 4, 6, 12, 14}, od = {1, 3, 9, 11, 5, 7, 13, 15};
    v8 ab = __builtin_shuffle(v[0], v[1], ev) + __builtin_shuffle(v[0], v[1], od);
    v8 cd = __builtin_shuffle(v[2], v[3], ev) + __builtin_shuffle(v[2], v[3], od);
    v8 r = __builtin_shuffle(ab, cd, ev) + __builtin_shuffle(ab, cd, od);
    for (int g = 0; g < G; g++) out[g * os] = r[g] + r[g + 4];
}

/* out[g * os] = a . b[g] (rows of b of length n) for g < G: 2G independent FMA chains. */
static inline __attribute__((always_inline))
void dots_g(const float *a, const float *b, int n, int G, float *out, int os) {
    v8 s0[4] = {0}, s1[4] = {0};
    int x = 0;
    for (; x + 16 <= n; x += 16) {
        v8 a0 = ld(a + x), a1 = ld(a + x + 8);
        for (int g = 0; g < G; g++) {
            s0[g] += a0 * ld(b + g * n + x);
            s1[g] += a1 * ld(b + g * n + x + 8);
        }
    }
    v8 s[4] = {0};
    for (int g = 0; g < G; g++) s[g] = s0[g] + s1[g];
    hsum4(s, G, out, os);
    for (int g = 0; g < G; g++)
        for (int y = x; y < n; y++) out[g * os] += a[y] * b[g * n + y];
}

/* out[g * os] = a . b[g] for every g < gn, four rows of b at a time. */
static inline void dots(const float *a, const float *b, int n, int gn, float *out, int os) {
    for (int g = 0; g < gn; g += 4, b += 4 * n, out += 4 * os) {
        switch (gn - g) {
            case 1: dots_g(a, b, n, 1, out, os); break;
            case 2: dots_g(a, b, n, 2, out, os); break;
            case 3: dots_g(a, b, n, 3, out, os); break;
            default: dots_g(a, b, n, 4, out, os);
        }
    }
}

/* acc[g] += sum_t w[g * P + t] * rows[t] for g < G; 16 columns at a time held in registers. */
static inline __attribute__((always_inline))
void axpy_rows_g(const float *rows, const float *w, int P, int d, int G, float *acc) {
    int x = 0;
    for (; x + 16 <= d; x += 16) {
        v8 a0[4], a1[4];
        for (int g = 0; g < G; g++) {
            a0[g] = ld(acc + g * d + x);
            a1[g] = ld(acc + g * d + x + 8);
        }
        for (int t = 0; t < P; t++) {
            v8 r0 = ld(rows + t * d + x), r1 = ld(rows + t * d + x + 8);
            for (int g = 0; g < G; g++) { a0[g] += w[g * P + t] * r0; a1[g] += w[g * P + t] * r1; }
        }
        for (int g = 0; g < G; g++) {
            st8(acc + g * d + x, a0[g]);
            st8(acc + g * d + x + 8, a1[g]);
        }
    }
    for (; x < d; x++)
        for (int g = 0; g < G; g++)
            for (int t = 0; t < P; t++) acc[g * d + x] += w[g * P + t] * rows[t * d + x];
}

static void axpy_rows(const float *rows, const float *w, int P, int d, int gn, float *acc) {
    for (int g = 0; g < gn; g += 4, w += 4 * P, acc += 4 * d) {
        switch (gn - g) {
            case 1: axpy_rows_g(rows, w, P, d, 1, acc); break;
            case 2: axpy_rows_g(rows, w, P, d, 2, acc); break;
            case 3: axpy_rows_g(rows, w, P, d, 3, acc); break;
            default: axpy_rows_g(rows, w, P, d, 4, acc);
        }
    }
}

/* exp(x) for x <= 0 (Cephes expf polynomial, ~1 ulp); exactly 0 below -87 and for -inf. */
static inline v8 vexp(v8 x) {
    const vi8 keep = x > -87.f;  /* -inf and underflow: clamped here, zeroed at the end */
    const v8 lo = (v8)(((vi8)x & keep) | ((vi8)((v8){0} - 87.f) & ~keep));
    v8 n = lo * 1.44269504088896341f + 12582912.f - 12582912.f;  /* round(x / ln 2) */
    v8 r = lo - n * 0.693359375f + n * 2.12194440e-4f;
    v8 p = 1.9875691500e-4f * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    vi8 e = (__builtin_convertvector(n, vi8) + 127) << 23;
    v8 y = p * (v8)e;
    return (v8)((vi8)y & keep);
}

/* s[t] = exp(s[t] - mx) for t < P; returns their sum. */
static inline float exp_shifted(float *s, int P, float mx) {
    float sum = 0.f;
    int t = 0;
    for (; t + 8 <= P; t += 8) {
        v8 e = vexp(ld(s + t) - mx);
        st8(s + t, e);
        sum += hsum(e);
    }
    for (; t < P; t++) { s[t] = expf(s[t] - mx); sum += s[t]; }
    return sum;
}

/* Criticality q2[bh, g] . meta[bh, p], one pass over the metadata: per_head 0 writes the group
   max scores[bh * n + p]; per_head 1 writes every head's, scores[(bh * g_n + g) * n + p]. */
void group_criticality(const float *meta, const float *q2, float *scores, int64_t rows,
                       int64_t n, int64_t cap_pages, int g_n, int d2, int per_head, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < rows * n; i++) {
        int64_t bh = i / n, p = i % n, ahead = i + 8;
        float s[g_n];
        if (ahead < rows * n)  /* the row 8 ahead into L2: the stream never waits for it */
            prefetch(meta + (ahead / n * cap_pages + ahead % n) * d2, d2);
        const float *row = meta + (bh * cap_pages + p) * d2, *qh = q2 + bh * g_n * d2;
        if (per_head) { dots(row, qh, d2, g_n, scores + bh * g_n * n + p, n); continue; }
        dots(row, qh, d2, g_n, s, 1);
        float best = -INFINITY;
        for (int g = 0; g < g_n; g++) best = fmaxf(best, s[g]);
        scores[i] = best;
    }
}

/* Softmax attention of q[bh] (g_n heads) over the pages[bh, :] of k and v, read in place, with an
   online softmax (flash-decoding): work item i = (bh, chunk of pages) writes its running max
   m[i, g], sum l[i, g] and unnormalised output acc[i, g, :]; the caller merges the chunks.
   valid (or NULL): keys that may be attended, uint8 [rows, k_n * P] shared by the group's heads,
   or with per_head uint8 [rows, g_n, k_n * P] (a page no head may attend is not read);
   softcap 0: none. */
void sparse_attention(const float *q, const float *k, const float *v, const int64_t *pages,
                      const uint8_t *valid, float *m, float *l, float *acc, int64_t rows,
                      int64_t k_n, int64_t chunks, int64_t cap, int P, int g_n, int d,
                      float scale, float softcap, int per_head, int threads) {
    int64_t per = (k_n + chunks - 1) / chunks;
    int64_t hs = per_head ? k_n * P : 0;  /* stride between the heads' masks */
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < rows * chunks; i++) {
        int64_t bh = i / chunks, c = i % chunks;
        int64_t end = (c + 1) * per < k_n ? (c + 1) * per : k_n;
        const float *qh = q + bh * g_n * d;
        float *mi = m + i * g_n, *li = l + i * g_n, *ai = acc + i * g_n * d;
        float s[g_n * P];  /* scores of one page, [g][t] */
        for (int g = 0; g < g_n; g++) { mi[g] = -INFINITY; li[g] = 0.f; }
        for (int x = 0; x < g_n * d; x++) ai[x] = 0.f;
        for (int64_t j = c * per; j < end; j++) {
            const uint8_t *ok = valid ? valid + (bh * (per_head ? g_n : 1) * k_n + j) * P : 0;
            if (per_head) {
                int any = 0;
                for (int x = 0; x < g_n * P && !any; x++) any = ok[(x / P) * hs + x % P];
                if (!any) continue;
            }
            int64_t row0 = (bh * cap + pages[bh * k_n + j] * P) * d;
            if (j + 1 < end) {  /* the next page into L2 while this one is computed */
                int64_t nxt = (bh * cap + pages[bh * k_n + j + 1] * P) * d;
                prefetch(k + nxt, (int64_t)P * d);
                prefetch(v + nxt, (int64_t)P * d);
            }
            for (int t = 0; t < P; t++) dots(k + row0 + t * d, qh, d, g_n, s + t, P);
            for (int g = 0; g < g_n; g++) {
                float *sg = s + g * P, mx = mi[g];
                const uint8_t *okg = ok ? ok + g * hs : 0;
                for (int t = 0; t < P; t++) {
                    float x = sg[t] * scale;
                    if (softcap > 0.f) x = tanhf(x / softcap) * softcap;
                    sg[t] = (okg && !okg[t]) ? -INFINITY : x;
                    mx = fmaxf(mx, sg[t]);
                }
                if (mx == -INFINITY) { for (int t = 0; t < P; t++) sg[t] = 0.f; continue; }
                float corr = expf(mi[g] - mx), sum = exp_shifted(sg, P, mx);
                if (corr != 1.f)
                    for (int x = 0; x < d; x++) ai[g * d + x] *= corr;
                li[g] = li[g] * corr + sum;
                mi[g] = mx;
            }
            axpy_rows(v + row0, s, P, d, g_n, ai);
        }
    }
}
"""

_I64, _INT, _PTR = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
_F32 = ctypes.c_float
_SIGNATURES = {
    "group_criticality": [_PTR, _PTR, _PTR, _I64, _I64, _I64, _INT, _INT, _INT, _INT],
    "sparse_attention": [_PTR] * 8 + [_I64] * 4 + [_INT] * 3 + [_F32, _F32, _INT, _INT],
}


class KernelBuildError(RuntimeError):
    """The C kernel was asked for and could not be built or loaded."""


def _flags() -> list[str]:
    simd = ["-mavx2", "-mfma"] if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") \
        else []
    return ["-O3", "-fopenmp", "-shared", "-fPIC", *simd]


def _library_path(cc: str) -> Path:
    key = hashlib.sha256("\0".join([SOURCE, cc, platform.machine(), *_flags()]).encode())
    return cache_dir() / "kernels" / f"quest_cpu_{key.hexdigest()[:16]}.so"


def build() -> Path:
    """Compile the kernel once (cached by source, compiler and flags); the path of the .so."""
    cc = os.environ.get("CC", "gcc")
    out = _library_path(cc)
    if out.exists():
        return out
    if shutil.which(cc) is None:
        raise KernelBuildError(f"the Quest C kernel needs a C compiler: {cc!r} was not found "
                               "(set CC, or use the PyTorch backend 'torch')")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src, so = Path(tmp) / "quest_cpu.c", Path(tmp) / out.name
        src.write_text(SOURCE)
        res = subprocess.run([cc, *_flags(), str(src), "-o", str(so)], capture_output=True,
                             text=True)
        if res.returncode != 0:
            raise KernelBuildError(f"building the Quest C kernel with {cc} failed:\n"
                                   f"{res.stderr.strip()}\n(use the PyTorch backend 'torch')")
        os.replace(so, out)
    return out


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    """The loaded kernel (built on first use); raises :class:`KernelBuildError` if impossible."""
    try:
        lib = ctypes.CDLL(str(build()))
    except OSError as exc:
        raise KernelBuildError(f"loading the Quest C kernel failed: {exc}") from exc
    for name, args in _SIGNATURES.items():
        getattr(lib, name).argtypes = args
    return lib


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _check(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.int64, torch.uint8) \
                or not t.is_contiguous():
            raise ValueError("the Quest C kernel takes contiguous CPU tensors (fp32 data, int64 "
                             f"pages); got {t.dtype} on {t.device}, "
                             f"contiguous={t.is_contiguous()}")


def group_criticality(q2: torch.Tensor, meta: torch.Tensor, n: int,
                      per_head: bool = False) -> torch.Tensor:
    """``[B, H_kv, n]``: max over the group of ``q2[B, H_kv, G, 2D] . meta[B, H_kv, p]``; with
    ``per_head``, every head's ``[B, H_kv, G, n]`` instead."""
    b, h, g, d2 = q2.shape
    _check(q2, meta)
    out = torch.empty(b, h, g, n) if per_head else torch.empty(b, h, n)
    library().group_criticality(_ptr(meta), _ptr(q2), _ptr(out), b * h, n, meta.shape[2], g, d2,
                                int(per_head), torch.get_num_threads())
    return out


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pages: torch.Tensor,
                     page_size: int, valid: torch.Tensor | None, scale: float,
                     softcap: float | None) -> torch.Tensor:
    """Softmax attention ``[B, H_kv, G, D]`` of ``q[B, H_kv, G, D]`` over the selected pages of
    ``k, v[B, H_kv, cap, D]`` (read in place); ``valid``: bool ``[B, H_kv, K*P]`` (the group's
    heads share it), ``[B, H_kv, G, K*P]`` (one mask per head; a page no head may attend is
    skipped) or None.

    Work is split into (row, chunk of pages) items, at least two per thread; each keeps its own
    running max / sum / output (online softmax) and the chunks are merged exactly here.
    """
    b, h, g, d = q.shape
    kn = pages.shape[-1]
    threads = torch.get_num_threads()
    chunks = min(kn, max(1, -(-2 * threads // (b * h))))
    mask = None if valid is None else valid.to(torch.uint8).contiguous()
    _check(q, k, v, pages, *([] if mask is None else [mask]))
    m = torch.empty(b, h, chunks, g)
    l = torch.empty(b, h, chunks, g)
    acc = torch.empty(b, h, chunks, g, d)
    library().sparse_attention(_ptr(q), _ptr(k), _ptr(v), _ptr(pages),
                               None if mask is None else _ptr(mask), _ptr(m), _ptr(l), _ptr(acc),
                               b * h, kn, chunks, k.shape[2], page_size, g, d, scale,
                               softcap or 0.0, int(valid is not None and valid.dim() == 4),
                               threads)
    if chunks == 1:
        return acc[:, :, 0] / l[:, :, 0, :, None]
    w = torch.exp(m - m.amax(dim=2, keepdim=True))
    return (acc * w[..., None]).sum(2) / (l * w).sum(2)[..., None]


class CBackend(TorchCPUBackend):
    """Quest with the in-place C loops (fp32 on the CPU; other tensors: the PyTorch backend)."""

    name = "c"

    @staticmethod
    def _takes(q: torch.Tensor, store) -> bool:
        return q.device.type == "cpu" and q.dtype == torch.float32 and store.k.dtype == torch.float32

    def _q2(self, q, store):
        return split_signs(grouped(q, store.k.shape[1])).contiguous()

    def group_scores(self, q, store):
        if not self._takes(q, store):
            return super().group_scores(q, store)
        return group_criticality(self._q2(q, store), store.meta, store.n_pages)

    def head_scores(self, q, store):
        if not self._takes(q, store):
            return super().head_scores(q, store)
        return group_criticality(self._q2(q, store), store.meta, store.n_pages, per_head=True)

    def attend_pages(self, q, store, pages, scale, key_mask, softcap, mine=None):
        if not self._takes(q, store):
            return super().attend_pages(q, store, pages, scale, key_mask, softcap, mine)
        b, hq, d = q.shape
        P = store.page_size
        valid = valid_keys(pages, store, key_mask)
        if mine is not None:  # [B, H_kv, G, U*P]: one mask per head
            per_head = mine.repeat_interleave(P, dim=-1)
            valid = per_head if valid is None else per_head & valid[:, :, None]
        out = sparse_attention(grouped(q, store.k.shape[1]).contiguous(), store.k, store.v, pages,
                               P, valid, scale, softcap)
        return out.reshape(b, hq, d)
