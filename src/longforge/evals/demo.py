"""The ``sparse`` stage of ``longforge demo``: passkey retrieval at 2K tokens, dense decode vs
Quest at 1/8 of the context (one shared prefill per sample; about a minute on 2 CPU cores)."""
from __future__ import annotations

import shutil
from pathlib import Path

DEPTHS = [0.0, 0.5, 1.0]


def sparse_stage(out_dir: Path, model) -> str:
    import torch

    from longforge.evals import passkey
    from longforge.evals.report import write_report
    from longforge.evals.runner import Results, parse_methods, run_grid

    out = out_dir / "sparse"
    if out.exists() and not (out / "settings.json").exists():
        shutil.rmtree(out)  # the demo's own folder, from a version that did not pin settings
    with torch.no_grad():
        run_grid("passkey", model.model, model.tokenizer, passkey.build, passkey.score, [2048],
                 DEPTHS, 1, parse_methods("dense,quest", "1/8"), out,
                 settings={"model": model.spec})
    s = write_report(out)
    acc = {r["method"]: r["value"] for r in s["overall"]}
    rows = Results.folder(out).rows
    budget = sorted({r["budget_tokens"] for r in rows if r["method"] == "quest"})
    n = len(DEPTHS)
    return (f"passkey at 2048 tokens, {n} depths: dense {acc['dense']:.0%}, Quest with a "
            f"{'/'.join(map(str, budget))}-token budget (1/8) {acc['quest']:.0%}; tables and "
            f"heatmaps in {out}")
