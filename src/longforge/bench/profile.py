"""``longforge bench profile``: where the microseconds of one Quest CPU decode step go.

Each kernel's step is run stage by stage with a clock reading between stages (every stage is a
synchronous CPU call, so the stages add up to the whole step), cold last-level cache at the start
of each step, the kernels interleaved, median per stage. Each stage's bytes (what it must read
from memory) over the streaming bandwidth (``x.sum()``, timed in the same rotation) give its
limit.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from longforge.bench import common
from longforge.bench.attention import FILL_NOTE, filled_store, parse_shape
from longforge.progress import progress
from longforge.sparse.attention import attend
from longforge.sparse.backends import c_cpu, get_backend
from longforge.sparse.selection import grouped, split_signs, top_pages


@dataclass
class Settings(common.KernelTiming):
    shape: str = "32/8x128"
    contexts: list[int] = field(default_factory=lambda: [32768, 131072])
    budget: int = 2048

    def command(self) -> str:
        return common.command_line("profile", self)


def _stamps(fns) -> list[float]:
    """Run ``fns`` in order, each on the previous result; seconds spent in each."""
    out, x = [], None
    for fn in fns:
        t0 = time.perf_counter()
        x = fn(x)
        out.append(time.perf_counter() - t0)
    return out


def torch_stages(q, store, budget_pages, scale):
    """The ``torch`` backend's Quest step (no mask, full last page), stage by stage."""
    be, P, hkv = get_backend("torch"), store.page_size, store.k.shape[1]
    return [
        ("criticality", lambda _: be.group_scores(q, store)),
        ("top-K", lambda s: top_pages(s, budget_pages)),
        ("gather K+V", lambda p: (be.gather(store.k, p, P, "k"), be.gather(store.v, p, P, "v"))),
        ("attention", lambda kv: attend(grouped(q, hkv), *kv, None, scale, None,
                                        keys_first=True)),
    ]


def c_stages(q, store, budget_pages, scale):
    """The ``c`` backend's Quest step (no mask, no softcap), stage by stage."""
    P = store.page_size
    qg = grouped(q, store.k.shape[1]).contiguous()

    def crit(_):
        return c_cpu.group_criticality(split_signs(qg), store.meta, store.n_pages)

    return [
        ("criticality", crit),
        ("top-K", lambda s: top_pages(s, budget_pages)),
        ("attention on the pages in place",
         lambda p: c_cpu.sparse_attention(qg, store.k, store.v, p, P, None, scale, None)),
    ]


STAGES = {"torch": torch_stages, "c": c_stages}


def stage_bytes(stage: str, store, budget: int) -> int:
    """Bytes a stage must read from memory (0 for work on data just produced in cache)."""
    hkv, d = store.k.shape[1], store.head_dim
    sel = budget * hkv * d * 4
    return {"criticality": store.n_pages * hkv * 2 * d * 4, "gather K+V": 2 * sel,
            "attention on the pages in place": 2 * sel}.get(stage, 0)


def run(s: Settings) -> dict:
    device = torch.device("cpu")
    torch.manual_seed(s.seed)
    shape = parse_shape(s.shape)
    env = common.environment(device)
    load_start = common.load_average()
    if "c" in s.kernels:
        c_cpu.library()  # builds it (clear error if impossible); the stages call it directly
    stream = common.Stream(s.stream_mb * 2**20, device)
    flush = common.Flusher(s.flush_mb * 2**20, device)
    budget_pages = max(1, s.budget // s.page_size)
    rows = []
    for L in progress(s.contexts, desc="profile", unit="context"):
        store = filled_store(shape, L, s.page_size, device, torch.float32)
        if store.n_pages <= budget_pages:
            raise ValueError(f"context {L} fits the budget {s.budget}: Quest would be dense")
        qs = [torch.randn(1, shape.heads_q, shape.head_dim) for _ in range(8)]
        scale = shape.head_dim ** -0.5
        times = {k: [] for k in [*s.kernels, "stream"]}
        for r in range(s.warmup + s.repeats):
            for k in common.rotated(list(times), r):
                flush()
                stages = [stream] if k == "stream" else \
                    [f for _, f in STAGES[k](qs[r % 8], store, budget_pages, scale)]
                t = _stamps(stages)
                if r >= s.warmup:
                    times[k].append(t)
        bandwidth = stream.bandwidth([t[0] for t in times.pop("stream")])
        for k in s.kernels:
            names = [n for n, _ in STAGES[k](qs[0], store, budget_pages, scale)]
            med = torch.tensor(times[k]).median(dim=0).values.tolist()
            total = common.median_ms([sum(t) for t in times[k]])
            quest_bytes = stage_bytes("criticality", store, s.budget) \
                + stage_bytes("gather K+V", store, s.budget)
            rows.append({
                **env, "shape": shape.label, "context": L, "budget": s.budget, "kernel": k,
                "bandwidth_GBps": bandwidth / 1e9,
                "total_ms": total, "limit_ms": 1e3 * quest_bytes / bandwidth,
                "fraction_of_limit": 1e3 * quest_bytes / bandwidth / total,
                "stages": [{"stage": n, "us": 1e6 * m, "bytes": stage_bytes(n, store, s.budget),
                            "GBps": stage_bytes(n, store, s.budget) / m / 1e9}
                           for n, m in zip(names, med)]})
        del store
    meta = {**env, "command": s.command(), "settings": asdict(s),
            "load_average_start": load_start, "load_average_end": common.load_average(),
            "fill": FILL_NOTE, "stream_mb": s.stream_mb,
            "timing": (f"median over {s.repeats} steps per kernel (after {s.warmup}) of each "
                       f"stage; a {s.flush_mb} MiB read before every step (cold cache); "
                       "kernels interleaved")}
    return {"meta": meta, "rows": rows}
