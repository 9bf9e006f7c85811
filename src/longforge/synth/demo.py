"""The ``synth`` stage of ``longforge demo``: Quest on a small slice of the sample corpus with
the bundled Gemma predicting the queries (about 2 minutes on 2 CPU cores)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from longforge.corpus import atomic_write_text

PER_SOURCE = 4          # 4 documents from each of the 7 domains: 28 one-segment queries


def _slice(out: Path) -> Path:
    from longforge.data import sample_corpus_path

    taken: dict[str, int] = {}
    keep = []
    for line in gzip.open(sample_corpus_path(), "rt", encoding="utf-8"):
        src = json.loads(line).get("source")
        if taken.get(src, 0) < PER_SOURCE:
            taken[src] = taken.get(src, 0) + 1
            keep.append(line)
    return atomic_write_text(out / "slice.jsonl", "".join(keep))


def demo_config(out: Path, predictor: str = "gemma-3-270m", query_source: str = "causal"):
    """The demo's synth settings, writing under ``out`` (``out/quest``); tokenized, so that
    ``longforge export`` can turn the result into training data (docs/export.md)."""
    from longforge.synth.config import SynthConfig

    return SynthConfig(inputs=[str(_slice(out))], output=out / "quest", method="quest",
                       predictor=predictor, query_source=query_source, max_segments=1,
                       segment_tokens=128, context_length=2048, no_keyword="standard",
                       tokenized=True, query_cache=out / "query-cache", seed=0)


def synth_stage(out_dir: Path, model) -> str:
    import shutil

    from longforge.runs import SettingsMismatch
    from longforge.synth.pipeline import run

    out = out_dir / "synth"
    spec = model.spec if model.spec in ("gemma-3-270m", "gemma") else "gemma-3-270m"
    cfg = demo_config(out, spec)
    shared = model if model.spec == spec else None  # the demo's model is the predictor
    try:
        m = run(cfg, shared)
    except SettingsMismatch:  # left by another longforge version: the demo's own scratch output
        shutil.rmtree(cfg.output)
        m = run(cfg, shared)
    q = m["quest"]
    return (f"quest synthesis on {m['read']} sample documents ({PER_SOURCE} per domain, Gemma "
            f"queries, ~2 min on 2 CPU cores): {m['sequences']} sequences of 2048 tokens, "
            f"{q['keywords']} keywords, {q['documents_without_keyword']} documents without one "
            f"(packed standard-style), I_s passes x{q['short_repeats']}; see {out / 'quest'}")
