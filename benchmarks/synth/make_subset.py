"""The documented subset of the sample corpus used for the committed synth report.

A seeded, stratified sample: up to ``--per-source`` documents from each source domain of the
sample corpus (random.Random(seed).sample over the domain's documents in file order), written in
the corpus's own order. Deterministic: same arguments, same bytes.

    python benchmarks/synth/make_subset.py --per-source 60 --seed 0 --out out/synth-subset/corpus.jsonl
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
from collections import defaultdict
from pathlib import Path

from longforge.corpus import atomic_write_text
from longforge.data import sample_corpus_path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-source", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("out/synth-subset/corpus.jsonl"))
    args = ap.parse_args()
    lines = gzip.open(sample_corpus_path(), "rt", encoding="utf-8").read().splitlines()
    by_source = defaultdict(list)
    for i, line in enumerate(lines):
        by_source[json.loads(line).get("source")].append(i)
    rng = random.Random(args.seed)
    keep = set()
    for src in sorted(by_source, key=str):
        idx = by_source[src]
        keep.update(rng.sample(idx, min(args.per_source, len(idx))))
    atomic_write_text(args.out, "".join(lines[i] + "\n" for i in sorted(keep)))
    print(f"{len(keep)} documents from {len(by_source)} domains -> {args.out}")


if __name__ == "__main__":
    main()
