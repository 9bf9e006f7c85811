"""Tables (JSON + Markdown) and depth x length heatmaps from a ``results.jsonl``.

Accuracies come with a Wilson 95% interval (binomial: how far the true rate of the cell could
be from the measured one with this many samples) and, for every policy, its paired difference
from dense on the same samples (``vs_dense``) with Newcombe's 95% interval for paired
proportions (Newcombe 1998, method 10: the two Wilson intervals combined with the correlation of
the pairs): the samples are the same prompts for every method, so the paired difference is
tighter than two separate intervals, and unlike a bootstrap it does not shrink to nothing when
the two policies agree on every sample (11 agreeing samples still allow a 26-point
difference, 44 an 8-point one)."""
from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path

from longforge.corpus import atomic_write_json, atomic_write_text
from longforge.evals.runner import Method, Results
from longforge.runs import RunFolder

log = logging.getLogger(__name__)


def _budget_key(b: str):
    if b == "-":
        return (0, 0.0)
    if "/" in b:
        n, d = b.split("/")
        return (1, int(n) / int(d))
    return (2, float(b))


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (95% for z = 1.96)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_difference(pairs: list[tuple[float, float]], z: float = 1.96) -> dict:
    """``p_a - p_b`` of paired binary outcomes ``(a, b)`` (1 correct, 0 not) with Newcombe's
    hybrid score interval for paired proportions (Newcombe 1998, Stat. Med. 17:2635, method 10;
    95% for z = 1.96)."""
    if any(v not in (0, 1) for pair in pairs for v in pair):
        raise ValueError("paired_difference takes outcomes of 0 or 1")
    n = len(pairs)
    both = sum(a == b == 1 for a, b in pairs)
    a_only = sum(a > b for a, b in pairs)
    b_only = sum(b > a for a, b in pairs)
    neither = n - both - a_only - b_only
    p1, p2 = (both + a_only) / n, (both + b_only) / n
    (l1, u1), (l2, u2) = wilson(both + a_only, n, z), wilson(both + b_only, n, z)
    # phi: the correlation of the pairs, its product-moment numerator shrunk by n/2 when positive
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    cross = both * neither - a_only * b_only
    num = cross - n / 2 if cross > n / 2 else min(cross, 0)
    phi = num / math.sqrt(margins) if margins else 0.0
    d = (a_only - b_only) / n
    lo = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)
                                + (u2 - p2) ** 2))
    hi = d + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1)
                                + (u1 - p1) ** 2))
    return {"difference": d, "ci": [max(-1.0, lo), min(1.0, hi)], "n": n}


def summarize(rows: list[dict]) -> dict:
    """Accuracy (or ppl) per method x budget x length x depth, plus per-length and overall;
    accuracies with their Wilson interval and paired differences from dense."""
    cells, by_len, overall = defaultdict(list), defaultdict(list), defaultdict(list)
    per_sample = defaultdict(dict)  # (length, depth, trial) -> {(method, budget): value}
    accuracy = bool(rows) and rows[0]["task"] != "ppl"
    for r in rows:
        v = r["ppl"] if r["task"] == "ppl" else float(r["correct"])
        m = (r["method"], r["budget"])
        cells[(*m, r["length"], r.get("depth"))].append(v)
        by_len[(*m, r["length"])].append(v)
        overall[m].append(v)
        per_sample[(r["length"], r.get("depth"), r.get("trial"))][m] = v
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731

    def stat(v):
        out = {"value": mean(v), "n": len(v)}
        if accuracy:
            out["ci"] = list(wilson(sum(v), len(v)))
        return out

    def versus(a, b, length):
        """Paired difference a - b over the samples of ``length`` that both policies ran."""
        pairs = [(vals[a], vals[b]) for (L, _, _), vals in per_sample.items()
                 if L == length and a in vals and b in vals]
        return paired_difference(pairs) if pairs else None

    vs_dense, quest_vs = [], []
    if accuracy:
        for (method, budget, length) in sorted(by_len, key=lambda k: _order((k, None))):
            if method == "dense":
                continue
            if d := versus((method, budget), ("dense", "-"), length):
                vs_dense.append(dict(method=method, budget=budget, length=length, **d))
            if not method.startswith("quest") and (d := versus(("quest", budget),
                                                               (method, budget), length)):
                quest_vs.append(dict(method=method, budget=budget, length=length, **d))
    return {
        "cells": [dict(method=k[0], budget=k[1], length=k[2], depth=k[3], **stat(v))
                  for k, v in sorted(cells.items(), key=_order)],
        "by_length": [dict(method=k[0], budget=k[1], length=k[2], **stat(v))
                      for k, v in sorted(by_len.items(), key=_order)],
        "overall": [dict(method=k[0], budget=k[1], **stat(v))
                    for k, v in sorted(overall.items(), key=_order)],
        "vs_dense": vs_dense,
        **({"quest_vs": quest_vs} if quest_vs else {}),
        **({"recall": _recall(rows)} if any(isinstance(r.get("expected"), list) for r in rows)
           else {}),
    }


def _recall(rows: list[dict]) -> list[dict]:
    """Per method x budget x length: the mean share of the expected values an answer holds
    (tasks whose answer is several values, such as multi-value NIAH)."""
    from longforge.evals.niah import recall

    got = defaultdict(list)
    for r in rows:
        got[(r["method"], r["budget"], r["length"])].append(recall(r["output"], r["expected"]))
    return [dict(method=k[0], budget=k[1], length=k[2], value=sum(v) / len(v), n=len(v))
            for k, v in sorted(got.items(), key=_order)]


def _order(item):
    k = item[0]
    return (k[0] != "dense", k[0], _budget_key(k[1]), *[(x is None, x or 0) for x in k[2:]])


def markdown(task: str, s: dict) -> str:
    metric = "perplexity" if task == "ppl" else "accuracy"
    lengths = sorted({c["length"] for c in s["by_length"]})
    labels = sorted({(c["method"], c["budget"]) for c in s["by_length"]},
                    key=lambda m: (m[0] != "dense", m[0], _budget_key(m[1])))
    fmt = (lambda v: f"{v:.3f}") if task == "ppl" else (lambda v: f"{100 * v:.0f}%")

    def cell(c):
        text = fmt(c["value"]) + f" ({c['n']})"
        if "ci" in c:
            text += f" [{100 * c['ci'][0]:.0f}-{100 * c['ci'][1]:.0f}]"
        return text

    def table(stats: list[dict], show) -> list[str]:
        """A method x budget by length table of ``stats``, each cell ``show(stat)``."""
        got = {(c["method"], c["budget"], c["length"]): c for c in stats}
        out = ["| method | budget | " + " | ".join(str(L) for L in lengths) + " |",
               "|---|---|" + "---|" * len(lengths)]
        for m in labels:
            row = [show(got[(*m, L)]) if (*m, L) in got else "" for L in lengths]
            out.append(f"| {m[0]} | {m[1]} | " + " | ".join(row) + " |")
        return out

    cells = ("the value and, in parentheses, the number of samples" if task == "ppl" else
             "the value, in parentheses the number of samples and, in brackets, the Wilson 95% "
             "interval of the accuracy")
    lines = [f"# {task}: {metric} per method x budget x context length", "",
             "Budget: tokens attended per KV head per decode step (a fraction is of the context "
             f"length). Cells give {cells}.",
             "", *table(s["by_length"], cell)]

    def differences(title: str, stats: list[dict], label) -> list[str]:
        """A policy by length table of paired differences (points, Newcombe interval)."""
        diff = {(d["method"], d["budget"], d["length"]): d for d in stats}
        out = ["", f"## {title} (points, Newcombe 95% interval for paired proportions)", "",
               "| policy | " + " | ".join(str(L) for L in lengths) + " |",
               "|---|" + "---|" * len(lengths)]
        for m in labels:
            if not any((*m, L) in diff for L in lengths):
                continue
            row = []
            for L in lengths:
                d = diff.get((*m, L))
                row.append("" if d is None else f"{100 * d['difference']:+.0f} "
                           f"[{100 * d['ci'][0]:+.0f}, {100 * d['ci'][1]:+.0f}]")
            out.append(f"| {label(m)} | " + " | ".join(row) + " |")
        return out

    if s.get("vs_dense"):
        lines += differences("difference from dense on the same samples", s["vs_dense"],
                             lambda m: Method(*m).label)
    if s.get("quest_vs"):
        lines += differences("Quest minus each other policy at the same budget, same samples",
                             s["quest_vs"],
                             lambda m: f"{Method('quest', m[1]).label} - {Method(*m).label}")
    if s.get("recall"):
        lines += ["", "## share of the values each answer holds (mean over samples)", "",
                  *table(s["recall"], lambda c: f"{100 * c['value']:.0f}%")]
    if task != "ppl":
        lines += ["", f"## {metric} per depth", "", "| method | budget | length | depth | value | n |",
                  "|---|---|---|---|---|---|"]
        for c in s["cells"]:
            lines.append(f"| {c['method']} | {c['budget']} | {c['length']} | {c['depth']} | "
                         f"{fmt(c['value'])} | {c['n']} |")
    return "\n".join(lines) + "\n"


def heatmaps(task: str, s: dict, out_dir: Path) -> list[Path]:
    """One PNG per method: a depth x length accuracy grid per budget."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for method in sorted({c["method"] for c in s["cells"]}):
        cells = [c for c in s["cells"] if c["method"] == method]
        budgets = sorted({c["budget"] for c in cells}, key=_budget_key)
        lengths = sorted({c["length"] for c in cells})
        depths = sorted({c["depth"] for c in cells})
        fig, axes = plt.subplots(1, len(budgets), figsize=(2.2 + 1.1 * len(lengths) * len(budgets),
                                                          1.2 + 0.45 * len(depths)), squeeze=False)
        for ax, b in zip(axes[0], budgets):
            grid = [[float("nan")] * len(lengths) for _ in depths]
            for c in cells:
                if c["budget"] == b:
                    grid[depths.index(c["depth"])][lengths.index(c["length"])] = c["value"]
            im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
            ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
            ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths] if ax is axes[0][0]
                          else [])
            ax.set_xlabel("context tokens")
            if ax is axes[0][0]:
                ax.set_ylabel("needle depth")
            ax.set_title(Method(method, b).label, fontsize=9)
            for i, row in enumerate(grid):
                for j, v in enumerate(row):
                    if v == v:
                        ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7)
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
        fig.suptitle(f"{task}: {method}", fontsize=10)
        p = Path(out_dir) / f"heatmap_{method}.png"
        fig.savefig(p, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)
    return paths


def rescore(rows: list[dict]) -> int:
    """Score each row's answer again (in place) with its task's scorer as it is now, so that a
    fix to a scorer reaches results written before it; returns how many verdicts changed."""
    from longforge.evals.grid import score_for

    changed = 0
    for r in rows:
        if r["task"] == "ppl":
            continue
        ok = bool(score_for(r["task"])(r["output"], r["expected"]))
        changed += ok != r["correct"]
        r["correct"] = ok
    return changed


def write_report(out_dir: Path) -> dict:
    """Write ``summary.json`` (with the run's pinned settings), ``summary.md`` and heatmaps next
    to ``results.jsonl``; every answer is scored again (:func:`rescore`), and ``summary.json``
    says how many stored verdicts that changed."""
    out_dir = Path(out_dir)
    rows = Results.folder(out_dir).rows
    if not rows:
        raise FileNotFoundError(f"no results in {out_dir} (results*.jsonl)")
    task = rows[0]["task"]
    changed = rescore(rows)
    if changed:
        log.warning("%s: %d stored verdicts differ from the scorer's now; the report uses the "
                    "scorer's", out_dir, changed)
    s = summarize(rows)
    pinned = RunFolder(out_dir, "eval", legacy=("config.json",)).pinned()
    settings = pinned["settings"] if pinned else {}
    atomic_write_json(out_dir / "summary.json", {**settings, "task": task, **s,
                                                 "rescored": changed})
    atomic_write_text(out_dir / "summary.md", markdown(task, s))
    if task != "ppl":
        heatmaps(task, s, out_dir)
    return s
