"""``longforge bench attention``: one decode step of attention, dense vs Quest, and the limit.

For every head shape and context length one cache is allocated, filled in place with synthetic
keys and values (``k.normal_()``, ``v.normal_()``, then ``store.set_length(L)``), and these are
timed, interleaved in a rotating order, each call starting with a cold last-level cache:

* ``dense_sdpa`` -- ``scaled_dot_product_attention`` over the cache (the stock kernel);
* ``dense_matmul`` -- the ``torch`` backend's dense step (matmul-softmax-matmul on the CPU);
* ``quest_<backend>@<budget>`` -- a backend's Quest step (CPU: ``torch`` and/or ``c``;
  CUDA: ``triton``; :mod:`longforge.sparse.backends`).

The limit of a method is the bytes it must read (dense: all K and V; Quest: the page metadata
plus ``budget`` tokens of K and V per KV head) over the streaming-read bandwidth, measured as one
more method in the same rotation (``x.sum()`` over ``stream_mb`` MiB); the fraction of the limit
is that time over the measured one.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import torch

from longforge.bench import common
from longforge.progress import progress
from longforge.sparse.backends import get_backend
from longforge.sparse.store import PagedKV

FILL_NOTE = ("Caches are filled in place with synthetic keys and values (k.normal_(), "
             "v.normal_(), then store.set_length(L)); no model ran a prefill.")


@dataclass(frozen=True)
class Shape:
    heads_q: int
    heads_kv: int
    head_dim: int

    @property
    def label(self) -> str:
        if self.heads_q == self.heads_kv:
            return f"MHA {self.heads_q}x{self.head_dim}"
        return f"GQA {self.heads_q}/{self.heads_kv}x{self.head_dim}"


def parse_shape(text: str) -> Shape:
    """``32x128`` (MHA) or ``32/8x128`` (GQA: query heads / KV heads x head dim)."""
    m = re.fullmatch(r"\s*(\d+)(?:/(\d+))?x(\d+)\s*", text)
    if not m:
        raise ValueError(f"shape {text!r}: write HQxD (MHA) or HQ/HKVxD (GQA), e.g. 32/8x128")
    hq, hkv, d = int(m[1]), int(m[2] or m[1]), int(m[3])
    if hq % hkv:
        raise ValueError(f"shape {text!r}: query heads must be a multiple of KV heads")
    return Shape(hq, hkv, d)


@dataclass
class Settings(common.KernelTiming):
    device: str = "cpu"
    shapes: list[str] = field(default_factory=lambda: ["32x128", "32/8x128"])
    contexts: list[int] = field(default_factory=lambda: [8192, 32768, 131072])
    budgets: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048, 4096])

    def command(self) -> str:
        return common.command_line("attention", self)


def dtype_for(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def filled_store(shape: Shape, length: int, page_size: int, device, dtype) -> PagedKV:
    store = PagedKV(1, shape.heads_kv, shape.head_dim, length, page_size, dtype, device)
    store.k.normal_()
    store.v.normal_()
    store.set_length(length)
    return store


def dense_bytes(shape: Shape, length: int, esize: int) -> int:
    return 2 * length * shape.heads_kv * shape.head_dim * esize


def quest_bytes(shape: Shape, length: int, budget: int, page_size: int, esize: int) -> int:
    """Page metadata (max and min per page) plus ``budget`` tokens of K and V per KV head."""
    pages = -(-length // page_size)
    kept = max(1, budget // page_size)
    if pages <= kept:  # the context fits the budget: Quest is dense
        return dense_bytes(shape, length, esize)
    meta = pages * 2 * shape.head_dim * shape.heads_kv * esize
    return meta + 2 * kept * page_size * shape.heads_kv * shape.head_dim * esize


def quest_kernels(device: torch.device, kernels: list[str]) -> list[str]:
    """The Quest implementations to time: Triton on CUDA, the chosen CPU kernels otherwise."""
    if device.type == "cuda":
        try:
            get_backend("triton", device)
        except Exception as exc:  # the reference would be timed instead
            raise ValueError(f"the Triton kernels do not import on this machine ({exc}); "
                             "nothing to time") from None
        return ["triton"]
    for k in kernels:
        if k not in CPU_KERNELS:
            raise ValueError(f"unknown CPU kernel {k!r}; choose from {CPU_KERNELS}")
        get_backend(k)  # builds the C kernel now (a clear error if it cannot be built)
    return list(kernels)


CPU_KERNELS = ("torch", "c")


def dense_sdpa(q: torch.Tensor, store: PagedKV, scale: float) -> torch.Tensor:
    """Dense decode step with ``scaled_dot_product_attention`` (the stock kernel, for comparison)."""
    b, hq, d = q.shape
    out = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, None], store.keys(), store.values(), scale=scale, enable_gqa=True)
    return out.reshape(b, hq, d)


def methods(store: PagedKV, shape: Shape, budgets: list[int], kernels: list[str]) -> dict:
    scale = shape.head_dim ** -0.5
    dense = get_backend("torch" if store.k.device.type == "cpu" else None, store.k.device)
    fns = {"dense_sdpa": lambda q: dense_sdpa(q, store, scale),
           "dense_matmul": lambda q: dense.dense(q, store, scale)}
    for kern in kernels:
        for b in budgets:
            fns[f"quest_{kern}@{b}"] = _quest(store, b, scale, kern)
    return fns


def _quest(store, budget, scale, kern):
    backend = get_backend(kern, store.k.device)
    return lambda q: backend.quest(q, store, budget, scale)


def time_interleaved(fns: dict, queries: list, warmup: int, repeats: int, flush,
                     device) -> dict[str, list[float]]:
    """Per method, ``repeats`` timings; every round runs all methods in a rotated order."""
    names = list(fns)
    for i in range(warmup):
        for n in names:
            fns[n](queries[i % len(queries)])
    times = {n: [] for n in names}
    for r in range(repeats):
        q = queries[r % len(queries)]
        for n in common.rotated(names, r):
            flush()
            times[n].append(common.timed(lambda: fns[n](q), device))
    return times


def rows_for(shape: Shape, length: int, times: dict, s: Settings, kernels: list[str],
             stream: common.Stream, env: dict, dtype: torch.dtype) -> list[dict]:
    esize = torch.finfo(dtype).bits // 8
    bandwidth = stream.bandwidth(times.pop("stream"))
    ms = {n: common.median_ms(t) for n, t in times.items()}
    fast_name = min(("dense_sdpa", "dense_matmul"), key=ms.get)
    dense_limit = 1e3 * dense_bytes(shape, length, esize) / bandwidth
    rows = []
    for kern in kernels:
        for b in s.budgets:
            t = times[f"quest_{kern}@{b}"]
            qb = quest_bytes(shape, length, b, s.page_size, esize)
            quest_ms = ms[f"quest_{kern}@{b}"]
            rows.append({
                **env, "dtype": str(dtype).removeprefix("torch."), "shape": shape.label,
                "heads_q": shape.heads_q, "heads_kv": shape.heads_kv,
                "head_dim": shape.head_dim, "context": length,
                "page_size": s.page_size, "budget": b, "kernel": kern,
                "bandwidth_GBps": bandwidth / 1e9,
                "quest_ms": quest_ms, "quest_q1_ms": _quantile_ms(t, 0.25),
                "quest_q3_ms": _quantile_ms(t, 0.75),
                "dense_sdpa_ms": ms["dense_sdpa"], "dense_matmul_ms": ms["dense_matmul"],
                "faster_dense": fast_name, "faster_dense_ms": ms[fast_name],
                "speedup": ms[fast_name] / quest_ms,
                "quest_bytes": qb, "quest_limit_ms": 1e3 * qb / bandwidth,
                "quest_fraction_of_limit": 1e3 * qb / bandwidth / quest_ms,
                "dense_bytes": dense_bytes(shape, length, esize), "dense_limit_ms": dense_limit,
                "dense_fraction_of_limit": dense_limit / ms[fast_name],
                "limit_speedup": dense_limit / (1e3 * qb / bandwidth),
            })
    return rows


def _quantile_ms(t: list[float], q: float) -> float:
    return 1e3 * float(torch.tensor(t).quantile(q))


def run(s: Settings) -> dict:
    """Run the whole grid; returns ``{"meta": ..., "rows": [...]}`` (nothing written)."""
    device = torch.device(s.device)
    dtype = dtype_for(device)
    kernels = quest_kernels(device, s.kernels)
    torch.manual_seed(s.seed)
    env = common.environment(device)
    load_start = common.load_average()
    stream = common.Stream(s.stream_mb * 2**20, device)
    flush = common.Flusher(s.flush_mb * 2**20, device)
    shapes = [parse_shape(x) for x in s.shapes]
    grid = [(sh, L) for sh in shapes for L in s.contexts]
    times = {}
    for sh, L in progress(grid, desc="attention", unit="cache"):
        store = filled_store(sh, L, s.page_size, device, dtype)
        queries = [torch.randn(1, sh.heads_q, sh.head_dim, device=device, dtype=dtype)
                   for _ in range(8)]
        fns = {**methods(store, sh, s.budgets, kernels), "stream": stream}
        times[sh, L] = time_interleaved(fns, queries, s.warmup, s.repeats, flush, device)
        del store, fns
    rows = [r for (sh, L), t in times.items()
            for r in rows_for(sh, L, t, s, kernels, stream, env, dtype)]
    bws = sorted({r["bandwidth_GBps"] for r in rows})
    meta = {**env, "command": s.command(), "settings": asdict(s),
            "load_average_start": load_start, "load_average_end": common.load_average(),
            "dtype": str(dtype).removeprefix("torch."),
            "bandwidth_GBps_min": bws[0], "bandwidth_GBps_max": bws[-1],
            "stream_mb": s.stream_mb, "fill": FILL_NOTE,
            "batch": 1,
            "timing": (f"median of {s.repeats} calls per method after {s.warmup} warm-up "
                       f"rounds; methods interleaved in a rotating order; a {s.flush_mb} MiB "
                       "read before every timed call (cold last-level cache)")}
    return {"meta": meta, "rows": rows}
