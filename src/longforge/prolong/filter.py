"""``longforge filter``: keep the documents with the highest LDS (the paper keeps the top 50%).

Writes ``OUT/part-00000.<fmt>`` in the input corpus's format and ``OUT/manifest.json`` that
accounts for every input document: kept, below the cutoff, unscored (too short), missing from
the scores, or skipped by the reader.
"""
from __future__ import annotations

import math
from pathlib import Path

from longforge.corpus import Manifest, ShardWriter, iter_input_files, read_documents
from longforge.corpus.writers import output_format_of
from longforge.prolong.score import read_scores
from longforge.runs import RunFolder


def select(records: list[dict], keep: float | None = None, threshold: float | None = None):
    """Ids to keep and the LDS cutoff. ``keep``: the top ``ceil(keep * n)`` of the n scored
    documents (ties broken by id, so the choice is deterministic); ``threshold``: LDS >= it."""
    if (keep is None) == (threshold is None):
        raise ValueError("give exactly one of --keep and --threshold")
    scored = sorted(((r["lds"], r["id"]) for r in records if r.get("lds") is not None),
                    key=lambda t: (-t[0], t[1]))
    if keep is not None:
        if not 0.0 <= keep <= 1.0:
            raise ValueError(f"--keep must be a fraction in [0, 1], not {keep}")
        top = scored[:math.ceil(keep * len(scored) - 1e-9)]
        return {i for _, i in top}, (top[-1][0] if top else None)
    return {i for lds, i in scored if lds >= threshold}, threshold


def _check_finished(scores) -> None:
    """A score folder must hold a finished run: a top fraction of part of a corpus is not the
    top fraction of the corpus."""
    p = Path(scores)
    if p.is_dir() and not (p / "manifest.json").exists():
        raise ValueError(f"{p}: the score run there has not finished (no manifest.json); "
                         "resume it with the same `longforge score` command first")


def filter_corpus(scores, corpus, output, *, keep: float | None = None,
                  threshold: float | None = None, fmt: str | None = None) -> dict:
    _check_finished(scores)
    run = RunFolder(output, "filter")
    inputs = [str(corpus)] if isinstance(corpus, (str, Path)) else [str(c) for c in corpus]
    run.pin({"scores": str(scores), "corpus": inputs, "keep": keep,
             "threshold": threshold, "format": fmt})
    records = read_scores(scores)
    by_id = {r["id"]: r for r in records}
    kept, cutoff = select(records, keep, threshold)
    fmt = fmt or output_format_of(iter_input_files(corpus)[0][0])
    manifest = Manifest()
    with ShardWriter(output, "part", 0, fmt) as w:
        for doc in read_documents(corpus, manifest):
            rec = by_id.get(doc.id)
            if doc.id in kept:
                w.write(doc)
                manifest.used += 1
            elif rec is None:
                manifest.drop("not_in_scores")
            elif rec.get("lds") is None:
                manifest.drop(f"unscored_{rec.get('skip') or 'unknown'}")
            else:
                manifest.drop("below_cutoff")
    manifest.extra = {"keep": keep, "threshold": threshold, "lds_cutoff": cutoff,
                      "scored_documents": sum(r.get("lds") is not None for r in records),
                      "scores": str(scores), "output_file": w.path.name}
    run.write_manifest(manifest.to_dict())
    return manifest.to_dict()
