"""An optional C/OpenMP kernel for the Quest CPU decode step: the pages are read in place.

The PyTorch path (:mod:`longforge.sparse.cpu`) copies the selected pages into a buffer before two
matmuls, so the selected K/V cross memory three times (read, write, read back); the criticality
matmul and its max over the group are two passes. These three loops read every byte once:

* :func:`group_criticality` -- ``scores[bh, p] = max_g q2[bh, g] . meta[bh, p]`` (one pass over
  the metadata, the group max fused in);
* :func:`paged_qk` -- ``s[bh, j*P + t, g] = k[bh, pages[bh, j]*P + t] . q[bh, g]``;
* :func:`paged_pv` -- ``sum_{j, t} p[bh, j*P + t, g] * v[bh, pages[bh, j]*P + t]``, split into
  chunks of pages when there are fewer (batch x KV head) rows than threads, summed after.

Masks, softcap and the softmax stay in PyTorch on the small score tensor, so the method is the
PyTorch path's exactly (equal to ``ops.quest_decode_reference`` up to fp32 rounding).

Opt-in only (``LONGFORGE_CPU_KERNEL=c`` or ``cpu.set_kernel("c")``). It is plain C built once by
``$CC`` (default ``gcc``) into ``cache_dir()/kernels`` and loaded with ctypes (about a second,
against ~40 s for a ``torch.utils.cpp_extension`` build; torch's own libgomp is already loaded,
so its OpenMP threads are shared). A build failure raises :class:`KernelBuildError`; nothing
falls back silently.
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

SOURCE = r"""
#include <math.h>
#include <stdint.h>

static float dot(const float *a, const float *b, int n) {
    float acc = 0.f;
    #pragma omp simd reduction(+:acc)
    for (int i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

void group_criticality(const float *meta, const float *q2, float *scores, int64_t rows,
                       int64_t n, int64_t cap_pages, int g_n, int d2, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < rows * n; i++) {
        int64_t bh = i / n, p = i % n;
        const float *m = meta + (bh * cap_pages + p) * d2, *q = q2 + bh * g_n * d2;
        float best = -INFINITY;
        for (int g = 0; g < g_n; g++) best = fmaxf(best, dot(q + g * d2, m, d2));
        scores[i] = best;
    }
}

void paged_qk(const float *k, const float *q, const int64_t *pages, float *s, int64_t rows,
              int64_t k_n, int64_t cap, int P, int g_n, int d, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < rows * k_n; i++) {
        int64_t bh = i / k_n;
        const float *page = k + (bh * cap + pages[i] * P) * d, *qh = q + bh * g_n * d;
        float *out = s + i * P * g_n;
        for (int t = 0; t < P; t++)
            for (int g = 0; g < g_n; g++) out[t * g_n + g] = dot(page + t * d, qh + g * d, d);
    }
}

void paged_pv(const float *v, const float *p, const int64_t *pages, float *part, int64_t rows,
              int64_t k_n, int64_t chunks, int64_t cap, int P, int g_n, int d, int threads) {
    int64_t per = (k_n + chunks - 1) / chunks;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < rows * chunks; i++) {
        int64_t bh = i / chunks, c = i % chunks;
        int64_t end = (c + 1) * per < k_n ? (c + 1) * per : k_n;
        float *acc = part + i * g_n * d;
        for (int x = 0; x < g_n * d; x++) acc[x] = 0.f;
        for (int64_t j = c * per; j < end; j++) {
            const float *page = v + (bh * cap + pages[bh * k_n + j] * P) * d;
            const float *w = p + (bh * k_n + j) * P * g_n;
            for (int t = 0; t < P; t++)
                for (int g = 0; g < g_n; g++) {
                    float wt = w[t * g_n + g], *a = acc + g * d;
                    const float *row = page + t * d;
                    #pragma omp simd
                    for (int x = 0; x < d; x++) a[x] += wt * row[x];
                }
        }
    }
}
"""

_I64, _INT, _PTR = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
_SIGNATURES = {
    "group_criticality": [_PTR, _PTR, _PTR, _I64, _I64, _I64, _INT, _INT, _INT],
    "paged_qk": [_PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64, _INT, _INT, _INT, _INT],
    "paged_pv": [_PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _INT, _INT, _INT, _INT],
}


class KernelBuildError(RuntimeError):
    """The C kernel was asked for and could not be built or loaded."""


def _flags() -> list[str]:
    simd = ["-mavx2", "-mfma"] if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") \
        else []
    return ["-O3", "-fopenmp", "-shared", "-fPIC", *simd]


def _library_path(cc: str) -> Path:
    from longforge.models import cache_dir

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
                               "(set CC, or use the default PyTorch path: kernel 'torch')")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src, so = Path(tmp) / "quest_cpu.c", Path(tmp) / out.name
        src.write_text(SOURCE)
        res = subprocess.run([cc, *_flags(), str(src), "-o", str(so)], capture_output=True,
                             text=True)
        if res.returncode != 0:
            raise KernelBuildError(f"building the Quest C kernel with {cc} failed:\n"
                                   f"{res.stderr.strip()}\n(use the default kernel 'torch')")
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
        if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.int64) \
                or not t.is_contiguous():
            raise ValueError("the Quest C kernel takes contiguous fp32 CPU tensors "
                             f"(got {t.dtype} on {t.device}, contiguous={t.is_contiguous()})")


def group_criticality(q2: torch.Tensor, meta: torch.Tensor, n: int) -> torch.Tensor:
    """``[B, H_kv, n]``: max over the group of ``q2[B, H_kv, G, 2D] . meta[B, H_kv, p]``."""
    b, h, g, d2 = q2.shape
    _check(q2, meta)
    out = torch.empty(b, h, n, dtype=torch.float32)
    library().group_criticality(_ptr(meta), _ptr(q2), _ptr(out), b * h, n, meta.shape[2], g, d2,
                                torch.get_num_threads())
    return out


def paged_qk(q: torch.Tensor, k: torch.Tensor, pages: torch.Tensor, page_size: int) -> torch.Tensor:
    """Scores ``[B, H_kv, K*P, G]`` of ``q[B, H_kv, G, D]`` against the selected pages of ``k``."""
    b, h, g, d = q.shape
    _check(q, k, pages)
    kn = pages.shape[-1]
    s = torch.empty(b, h, kn * page_size, g, dtype=torch.float32)
    library().paged_qk(_ptr(k), _ptr(q), _ptr(pages), _ptr(s), b * h, kn, k.shape[2], page_size,
                       g, d, torch.get_num_threads())
    return s


def paged_pv(p: torch.Tensor, v: torch.Tensor, pages: torch.Tensor, page_size: int) -> torch.Tensor:
    """``[B, H_kv, G, D]``: the probabilities ``p[B, H_kv, K*P, G]`` times the selected values."""
    b, h, _, g = p.shape
    d = v.shape[-1]
    _check(p, v, pages)
    kn = pages.shape[-1]
    threads = torch.get_num_threads()
    chunks = min(kn, max(1, -(-2 * threads // (b * h))))  # >= 2 work items per thread
    part = torch.empty(b, h, chunks, g, d, dtype=torch.float32)
    library().paged_pv(_ptr(v), _ptr(p), _ptr(pages), _ptr(part), b * h, kn, chunks, v.shape[2],
                       page_size, g, d, threads)
    return part[:, :, 0] if chunks == 1 else part.sum(2)
