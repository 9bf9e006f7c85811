"""``longforge filter``: keep the documents with the highest LDS (the paper keeps the top 50%).

Writes ``OUT/part-00000.<fmt>`` in the input corpus's format and ``OUT/manifest.json`` that
accounts for every input document: kept, below the cutoff, unscored (too short), missing from
the scores, or skipped by the reader.

LDS is a sum over the pairs of chunks that pass the threshold, so it grows with a document's
length (its number of chunks); the ProLong authors advise comparing documents of similar
length. ``length_buckets`` keeps the top fraction *within* each length bucket instead of over
the whole corpus: ``"chunks"`` (one bucket per number of chunks scored) or token-count edges
(``[1024, 4096]``: fewer than 1024 tokens, 1024 to 4095, 4096 or more).
"""
from __future__ import annotations

import bisect
import math
from collections import defaultdict
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


def parse_buckets(values) -> str | list[int] | None:
    """``--length-buckets`` values: ``chunks``, or increasing positive token-count edges."""
    values = [str(v).strip() for v in (values or []) if str(v).strip()]
    if not values:
        return None
    if values == ["chunks"]:
        return "chunks"
    try:
        edges = [int(v) for v in values]
    except ValueError:
        raise ValueError(f"--length-buckets takes 'chunks' or token-count edges such as "
                         f"1024,4096, not {','.join(values)!r}") from None
    if any(e <= 0 for e in edges) or edges != sorted(set(edges)):
        raise ValueError(f"--length-buckets edges must be increasing positive token counts, "
                         f"not {edges}")
    return edges


def bucket_of(rec: dict, buckets: str | list[int]) -> str:
    """The length bucket of a score record (a label)."""
    return _bucket(rec, buckets)[1]


def _bucket(rec: dict, buckets: str | list[int]) -> tuple[int, str]:
    """The bucket's lower bound (chunks or tokens: the order of the buckets) and its label."""
    if buckets == "chunks":
        return rec["n_chunks"], f"{rec['n_chunks']} chunks"
    i = bisect.bisect_right(buckets, rec["n_tokens"])
    lo = buckets[i - 1] if i else 0
    return lo, f"{lo}+ tokens" if i == len(buckets) else f"{lo}-{buckets[i] - 1} tokens"


def select_by_length(records: list[dict], keep: float, buckets: str | list[int]):
    """The top ``keep`` fraction of each length bucket (:func:`select` in each): the ids kept
    and ``{bucket: {"scored", "kept", "lds_cutoff"}}``, buckets in order of length."""
    by_bucket: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for r in records:
        if r.get("lds") is not None:
            by_bucket[_bucket(r, buckets)].append(r)
    kept, report = set(), {}
    for key in sorted(by_bucket):
        ids, cutoff = select(by_bucket[key], keep=keep)
        kept |= ids
        report[key[1]] = {"scored": len(by_bucket[key]), "kept": len(ids), "lds_cutoff": cutoff}
    return kept, report


def _check_finished(scores) -> None:
    """A score folder must hold a finished run: a top fraction of part of a corpus is not the
    top fraction of the corpus."""
    p = Path(scores)
    if p.is_dir() and not (p / "manifest.json").exists():
        raise ValueError(f"{p}: the score run there has not finished (no manifest.json); "
                         "resume it with the same `longforge score` command first")


def filter_corpus(scores, corpus, output, *, keep: float | None = None,
                  threshold: float | None = None, fmt: str | None = None,
                  length_buckets=None) -> dict:
    """``length_buckets``: None (one ranking), ``"chunks"`` or token-count edges (see the module
    docstring); only with ``keep``."""
    buckets = parse_buckets([length_buckets] if isinstance(length_buckets, str) else length_buckets)
    if buckets is not None and keep is None:
        raise ValueError("--length-buckets goes with --keep (a threshold is the same for every "
                         "length)")
    _check_finished(scores)
    run = RunFolder(output, "filter")
    inputs = [str(corpus)] if isinstance(corpus, (str, Path)) else [str(c) for c in corpus]
    pinned = {"scores": str(scores), "corpus": inputs, "keep": keep, "threshold": threshold,
              "format": fmt}
    if buckets is not None:
        pinned["length_buckets"] = buckets
    run.pin(pinned)
    records = read_scores(scores)
    by_id = {r["id"]: r for r in records}
    report = None
    if buckets is None:
        kept, cutoff = select(records, keep, threshold)
    else:
        if not 0.0 <= keep <= 1.0:
            raise ValueError(f"--keep must be a fraction in [0, 1], not {keep}")
        (kept, report), cutoff = select_by_length(records, keep, buckets), None
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
                      **({"length_buckets": buckets, "buckets": report} if report is not None else {}),
                      "scored_documents": sum(r.get("lds") is not None for r in records),
                      "scores": str(scores), "output_file": w.path.name}
    run.write_manifest(manifest.to_dict())
    return manifest.to_dict()
