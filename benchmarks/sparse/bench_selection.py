"""What the GQA page-selection choices cost per decode step on this CPU, same run.

    python benchmarks/sparse/bench_selection.py \
        --out benchmarks/results/selection_cpu

One Quest decode step (fp32, batch 1, cold cache as in ``longforge bench attention``) with the
pages chosen by the max over each KV group's heads (``max``, the default), by the heads taking
turns (``rank``: same K pages per group) and per query head (``head``: the union of the heads'
pages read once per group, up to G x the pages), against dense matmul decode over the same
cache. Rounds rotate the order.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

from longforge.bench import common
from longforge.bench.attention import filled_store, parse_shape
from longforge.corpus import atomic_write_json, atomic_write_text
from longforge.sparse.backends import get_backend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="32/8x128,4/1x256")
    ap.add_argument("--contexts", default="32768,131072")
    ap.add_argument("--budget", type=int, default=2048)
    ap.add_argument("--page-sizes", default="16,8")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    a = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device("cpu")
    flush = common.Flusher(256 * 2**20, dev)
    rows = []
    be = get_backend("c")
    for shape in map(parse_shape, a.shapes.split(",")):
        for L, page in itertools.product(map(int, a.contexts.split(",")),
                                         map(int, a.page_sizes.split(","))):
            store = filled_store(shape, L, page, dev, torch.float32)
            q = torch.randn(1, shape.heads_q, shape.head_dim)
            s = shape.head_dim ** -0.5
            fns = {"dense": lambda: be.dense(q, store, s),
                   "max": lambda: be.quest(q, store, a.budget, s),
                   "rank": lambda: be.quest(q, store, a.budget, s, selection="rank"),
                   "head": lambda: be.quest(q, store, a.budget, s, selection="head")}
            times = {n: [] for n in fns}
            for r in range(a.rounds + 1):
                for n in common.rotated(list(fns), r):
                    flush()
                    t = common.timed(fns[n], dev)
                    if r:  # round 0 warms up
                        times[n].append(t)
            ms = {n: common.median_ms(t) for n, t in times.items()}
            rows.append({"shape": shape.label, "context": L, "budget": a.budget,
                         "page_size": page, "ms": ms,
                         "speedup": {n: ms["dense"] / ms[n] for n in ("max", "rank", "head")}})
    lines = ["# Quest page selection on CPU: max over heads vs heads in turn vs per head", "",
             f"Command: `python {' '.join(sys.argv)}`", "",
             f"C kernel; fp32, batch 1, budget "
             f"{a.budget}, median of {a.rounds} rounds; speedup over dense "
             "matmul decode of the same run.", "",
             "| shape | context | page | dense ms | max ms (x) | rank ms (x) | per head ms (x) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        m, x = r["ms"], r["speedup"]
        lines.append(f"| {r['shape']} | {r['context'] // 1024}K | {r['page_size']} | "
                     f"{m['dense']:.2f} | "
                     f"{m['max']:.2f} ({x['max']:.1f}x) | {m['rank']:.2f} ({x['rank']:.1f}x) | "
                     f"{m['head']:.2f} ({x['head']:.1f}x) |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        env = common.environment(dev)
        atomic_write_json(Path(a.out + ".json"), {"command": " ".join(sys.argv), "env": env,
                                                  "rows": rows})
        atomic_write_text(Path(a.out + ".md"), text)


if __name__ == "__main__":
    main()
