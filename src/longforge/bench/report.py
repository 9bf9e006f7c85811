"""JSON, Markdown and a plot for the benchmark results (all written atomically)."""
from __future__ import annotations

import io
from pathlib import Path

from longforge.corpus import atomic_write_json, atomic_write_text

# issue 8 "done when": Quest speedup over the faster dense path (GQA 32/8x128, budget 2048)
ATTENTION_TARGETS = {32768: 5.0, 131072: 12.0}
DECODE_TARGETS = {32768: 1.5, 131072: 3.0}


def _k(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _target_cell(value: float, target: float | None) -> str:
    if target is None:
        return "-"
    verdict = "met" if value >= target else f"missed by {target - value:.2f}x"
    return f">= {target:g}x: {verdict}"


def _environment(meta: dict) -> str:
    load = ""
    if meta.get("load_average_start"):
        load = (f" Load average (1/5/15 min) {meta['load_average_start']} at the start, "
                f"{meta['load_average_end']} at the end.")
    return (f"Machine: {meta['cpu']}, {meta['cores']} cores, torch {meta['torch']} "
            f"({meta['threads']} threads), device `{meta['device']}`"
            + (f" ({meta['gpu']})" if meta.get("gpu") else "") + "." + load)


# ------------------------------------------------------------------ attention
def attention_headline(rows: list[dict], budget: int = 2048) -> list[dict]:
    """Rows of the GQA 32/8x128 shape at ``budget`` (the issue's targets)."""
    return [r for r in rows if r["shape"] == "GQA 32/8x128" and r["budget"] == budget]


def attention_markdown(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    out = [f"# Decode attention, dense vs Quest ({meta['device']})", "",
           f"Command: `{meta['command']}`", "", _environment(meta), "",
           f"- {meta['fill']}",
           f"- Batch 1, {meta['dtype']}, page size {meta['settings']['page_size']}; "
           f"{meta['timing']}.",
           f"- Streaming-read bandwidth: `x.sum()` over {meta['stream_mb']} MiB, timed as one "
           "more method in the same rotation at every shape and context (median): "
           f"{meta['bandwidth_GBps_min']:.1f} to {meta['bandwidth_GBps_max']:.1f} GB/s "
           "(column `GB/s`).",
           "- Speedup: the faster dense path (SDPA or matmul) over Quest. Limit: bytes the "
           "method must read / bandwidth (dense: all of K and V; Quest: page max/min "
           "metadata + budget tokens of K and V per KV head). Fraction = limit / measured.", ""]
    head = attention_headline(rows)
    if head:
        out += ["## Headline: GQA 32/8x128, budget 2048", "",
                _table(["context", "kernel", "Quest ms", "faster dense", "dense ms", "speedup",
                        "target", "Quest fraction of limit", "speedup at the limits"],
                       [[_k(r["context"]), r["kernel"], f"{r['quest_ms']:.3f}",
                         r["faster_dense"], f"{r['faster_dense_ms']:.2f}",
                         f"{r['speedup']:.2f}x",
                         _target_cell(r["speedup"], ATTENTION_TARGETS.get(r["context"])),
                         f"{r['quest_fraction_of_limit']:.0%}", f"{r['limit_speedup']:.1f}x"]
                        for r in head]), ""]
    out += ["## All points", "",
            _table(["shape", "context", "GB/s", "budget", "kernel", "SDPA ms", "matmul ms",
                    "dense fraction of limit", "Quest ms (q1-q3)", "speedup",
                    "Quest limit ms", "Quest fraction of limit"],
                   [[r["shape"], _k(r["context"]), f"{r['bandwidth_GBps']:.1f}", r["budget"],
                     r["kernel"],
                     f"{r['dense_sdpa_ms']:.2f}", f"{r['dense_matmul_ms']:.2f}",
                     f"{r['dense_fraction_of_limit']:.0%}",
                     f"{r['quest_ms']:.3f} ({r['quest_q1_ms']:.3f}-{r['quest_q3_ms']:.3f})",
                     f"{r['speedup']:.2f}x", f"{r['quest_limit_ms']:.3f}",
                     f"{r['quest_fraction_of_limit']:.0%}"] for r in rows]), ""]
    return "\n".join(out)


def attention_plot(result: dict) -> bytes:
    """PNG: time per decode step vs context, one panel per shape (log-log). Colour: budget;
    line: Quest kernel (solid: the last one listed); dense paths in black and grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    kernels = list(dict.fromkeys(r["kernel"] for r in rows))
    budgets = sorted({r["budget"] for r in rows})
    colours = plt.cm.viridis([i / max(1, len(budgets) - 1) * 0.9 for i in range(len(budgets))])
    fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 5), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        mine = [r for r in rows if r["shape"] == shape]
        one = {r["context"]: r for r in mine if r["kernel"] == kernels[0]
               and r["budget"] == budgets[0]}
        ctx = sorted(one)
        for key, label, style in (("dense_sdpa_ms", "dense SDPA", "s-"),
                                  ("dense_matmul_ms", "dense matmul", "o-"),
                                  ("dense_limit_ms", "dense limit", ":")):
            ax.plot(ctx, [one[c][key] for c in ctx], style, label=label,
                    color="grey" if key == "dense_matmul_ms" else "black")
        for kern in kernels:
            for b, colour in zip(budgets, colours):
                pts = sorted((r["context"], r["quest_ms"]) for r in mine
                             if r["kernel"] == kern and r["budget"] == b)
                ax.plot(*zip(*pts), "^-" if kern == kernels[-1] else "v--", color=colour,
                        alpha=1.0 if kern == kernels[-1] else 0.5, label=f"Quest {kern} @{b}")
        b_lim = 2048 if 2048 in budgets else budgets[-1]
        lim = sorted((r["context"], r["quest_limit_ms"]) for r in mine
                     if r["budget"] == b_lim and r["kernel"] == kernels[0])
        ax.plot(*zip(*lim), "r:", label=f"Quest limit @{b_lim}")
        ax.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="ms per decode step",
               title=f"{shape}, {result['meta']['device']}")
        ax.set_xticks(ctx, [_k(c) for c in ctx])
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7)
    fig.tight_layout(rect=(0, 0.04 * (1 + len(labels) // 6), 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_attention(result: dict, out: Path) -> None:
    out = Path(out)
    atomic_write_json(out / "results.json", result)
    atomic_write_text(out / "results.md", attention_markdown(result))
    png = attention_plot(result)
    tmp = out / ".results.png.tmp"
    tmp.write_bytes(png)
    tmp.replace(out / "results.png")


# ------------------------------------------------------------------ decode
def decode_markdown(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    st = meta["settings"]
    gb = 1e9
    out = [f"# End-to-end decode, dense vs Quest ({meta['device']})", "",
           f"Command: `{meta['command']}`", "", _environment(meta), "",
           f"- {meta['fill']}",
           f"- Part (b): `{st['model']}` after a real dense prefill of a passkey prompt; the "
           "cache is copied per policy and each policy greedily decodes its own continuation.",
           f"- Quest: budget {st['budget']}, page size {st['page_size']}, first "
           f"{st['dense_layers']} layers dense, kernel `{st['kernel']}`"
           + (" (and, as `Quest torch`, the PyTorch CPU backend)" if st["kernel"] == "c" else "")
           + ". Dense: the `Dense` policy of the same harness over the same preallocated cache "
           "(the backend's dense step: matmul-softmax-matmul on a CPU, Triton's paged kernel "
           "over every page on CUDA).",
           f"- Batch 1, {meta.get('dtype', 'fp32')}; {meta['timing']}. \"No context\": the "
           "same model over a near-empty "
           "cache (one page; in part (b) the shortest passkey prompt): weights, matmuls, "
           "framework; step - no context = the attention's share.",
           "- Limits: (weights read per step + K/V bytes of the policy) / the streaming-read "
           f"bandwidth (`x.sum()` over {meta['stream_mb']} MiB, timed in the same rotation as "
           "the decode steps; column `GB/s`).", "",
           _table(["model", "context", "GB/s", "dense ms (tok/s)", "Quest ms (tok/s)", "speedup",
                   "target", "Quest torch ms (speedup)", "no context ms",
                   "attention ms dense / Quest", "GB read dense / Quest", "speedup at the limits",
                   "fraction of limit dense / Quest"],
                  [[r["model"], _k(r["context"]), f"{r['bandwidth_GBps']:.1f}",
                    f"{r['dense_ms']:.1f} ({r['dense_tokens_per_s']:.2f})",
                    f"{r['quest_ms']:.1f} ({r['quest_tokens_per_s']:.2f})",
                    f"{r['speedup']:.2f}x",
                    _target_cell(r["speedup"], DECODE_TARGETS.get(r["context"])
                                 if r["model"] == "tinyllama" else None),
                    "-" if r.get("quest_torch_ms") is None else
                    f"{r['quest_torch_ms']:.1f} ({r['speedup_torch']:.2f}x)",
                    f"{r['no_context_ms']:.1f}",
                    f"{r['dense_attention_ms']:.1f} / {r['quest_attention_ms']:.1f}",
                    f"{(r['weight_bytes'] + r['dense_kv_bytes']) / gb:.2f} / "
                    f"{(r['weight_bytes'] + r['quest_kv_bytes']) / gb:.2f}",
                    f"{r['limit_speedup']:.2f}x",
                    f"{r['dense_fraction_of_limit']:.0%} / {r['quest_fraction_of_limit']:.0%}"]
                   for r in rows]), ""]
    for r in rows:
        if "prefill_s" in r:
            out.append(f"- {r['model']} prefill of {r['context']} tokens: {r['prefill_s']:.1f} s.")
    return "\n".join(out) + "\n"


def write_decode(result: dict, out: Path) -> None:
    out = Path(out)
    atomic_write_json(out / "results.json", result)
    atomic_write_text(out / "results.md", decode_markdown(result))


# ------------------------------------------------------------------ profile
def profile_markdown(result: dict) -> str:
    meta = result["meta"]
    out = ["# Where the time of one Quest CPU decode step goes", "",
           f"Command: `{meta['command']}`", "", _environment(meta), "",
           f"- {meta['fill']}",
           f"- {meta['timing']}. Streaming read: `x.sum()` over {meta['stream_mb']} MiB, timed "
           "in the same rotation (per context, below).",
           "- Bytes: what the stage must read from memory (metadata; selected K and V); stages "
           "on data just produced (scores, gathered buffers in cache) count 0.", ""]
    for r in result["rows"]:
        out += [f"## {r['shape']}, context {_k(r['context'])}, budget {r['budget']}, "
                f"kernel `{r['kernel']}`: {r['total_ms'] * 1e3:.0f} us "
                f"(limit {r['limit_ms'] * 1e3:.0f} us, {r['fraction_of_limit']:.0%})", "",
                _table(["stage", "us", "share", "MB read", "GB/s", "of bandwidth"],
                       [[x["stage"], f"{x['us']:.0f}",
                         f"{x['us'] / (r['total_ms'] * 1e3):.0%}", f"{x['bytes'] / 1e6:.1f}",
                         f"{x['GBps']:.1f}" if x["bytes"] else "-",
                         f"{x['GBps'] / r['bandwidth_GBps']:.0%}" if x["bytes"] else "-"]
                        for x in r["stages"]]), ""]
    return "\n".join(out)


def write_profile(result: dict, out: Path) -> None:
    out = Path(out)
    atomic_write_json(out / "profile.json", result)
    atomic_write_text(out / "profile.md", profile_markdown(result))
