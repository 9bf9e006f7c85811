"""``longforge demo``: the main job on the bundled Gemma 3 270M and the sample corpus.

Each method contributes one stage ``stage(out_dir: Path, model) -> str`` (a one-line
summary); stages run in order and write under ``out_dir/<stage>``.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import typer

from longforge.cli_support import command
from longforge.corpus import Manifest, atomic_write_json, read_documents
from longforge.data import sample_corpus_path
from longforge.progress import say


def corpus_stage(out_dir: Path, model) -> str:
    manifest = Manifest()
    by_source: Counter = Counter()
    chars = []
    for doc in read_documents(sample_corpus_path(), manifest):
        by_source[doc.source] += 1
        chars.append(len(doc.text))
    chars.sort()
    stats = {"documents": manifest.read, "skipped": len(manifest.skips),
             "by_source": dict(sorted(by_source.items())),
             "chars_min": chars[0], "chars_median": chars[len(chars) // 2], "chars_max": chars[-1]}
    atomic_write_json(out_dir / "corpus" / "stats.json", stats)
    return (f"sample corpus: {stats['documents']} documents in {len(by_source)} domains, "
            f"{stats['chars_median']} characters median, {stats['chars_max']} max")


def model_stage(out_dir: Path, model) -> str:
    import torch

    tok, m = model.tokenizer, model.model
    prompt = "The three primary colors are"
    ids = tok(prompt, return_tensors="pt").to(m.device)
    with torch.no_grad():
        out = m.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    atomic_write_json(out_dir / "model" / "continuation.json", {"prompt": prompt, "output": text})
    return f"model {model.spec}: {prompt!r} -> {text.strip()!r}"


def _stages():
    from longforge.evals.demo import sparse_stage
    from longforge.prolong.demo import prolong_stage
    from longforge.synth.demo import synth_stage

    return [("corpus", corpus_stage), ("model", model_stage), ("prolong", prolong_stage),
            ("synth", synth_stage), ("sparse", sparse_stage)]


@command
def demo(output: Path = typer.Option(Path("out/demo"), "--output", "-o",
                                     help="Where the demo writes its outputs."),
         model: str = typer.Option("gemma-3-270m", help="Model spec (default: bundled Gemma).")):
    """Run every method on the bundled Gemma 3 270M and the sample corpus, and say where the
    outputs are."""
    from longforge.models import load_model

    t0 = time.time()
    output.mkdir(parents=True, exist_ok=True)
    say(f"loading {model} ...")
    lm = load_model(model)
    lines = []
    for name, stage in _stages():
        say(f"[{name}] running ...")
        t = time.time()
        line = stage(output, lm)
        lines.append(f"[{name}] {line} ({time.time() - t:.0f}s)")
        say(lines[-1])
    summary = "\n".join(lines)
    (output / "SUMMARY.txt").write_text(summary + "\n")
    typer.echo(summary)
    typer.echo(f"\ndemo finished in {time.time() - t0:.0f}s; outputs are under {output.resolve()}")
