"""Speed and memory of `longforge export` against the synth run that made its input.

Makes (or takes, ``--run``) a tokenized ``standard`` synth run over ``--documents`` documents
built from the sample corpus's sentences (seeded: each document is 4 to 40 sentences drawn at
random), then exports it to every format, each export in a process of its own, and prints per
format: seconds, tokens/s, peak RSS, and the ratio of the synth run's time (its timings.json
``total_s``) to the export's (``export_s``; the target is >= 10), with the wall-clock ratio
(interpreter start included) beside it. The export's peak RSS is printed against the bytes of
the run's token ids: an export that streams stays far below them.

    python benchmarks/export/bench_export.py --documents 100000 --context-length 8192 \\
        --out benchmarks/results/export_cpu.json
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from longforge.corpus import atomic_write_json, atomic_write_text
from longforge.data import sample_corpus_path

FORMATS = ("megatron", "mds", "hf", "datatrove")


def make_corpus(path: Path, documents: int, seed: int) -> Path:
    """``documents`` JSONL documents of sentences from the sample corpus."""
    sentences = []
    with gzip.open(sample_corpus_path(), "rt", encoding="utf-8") as fh:
        for line in fh:
            text = json.loads(line)["text"]
            sentences += [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n\s*\n", text)
                          if len(s.strip()) >= 20]
    rng = random.Random(seed)
    lines = [json.dumps({"id": f"doc{i:07d}", "source": "sample-sentences",
                         "text": " ".join(rng.choices(sentences, k=rng.randint(4, 40)))})
             for i in range(documents)]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                            env={**os.environ, "LONGFORGE_QUIET": "1"})
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}")
    return time.perf_counter() - t0, usage.ru_maxrss / 1024


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "longforge.cli", *map(str, args), "-q"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--documents", type=int, default=100_000)
    ap.add_argument("--context-length", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run", type=Path, help="A tokenized synth run to export (else one is made).")
    ap.add_argument("--workdir", type=Path, default=Path("out/bench-export"))
    ap.add_argument("--out", type=Path, help="Where to write the results (JSON).")
    args = ap.parse_args()
    work = args.workdir
    synth_rss = None
    if args.run is None:
        corpus = make_corpus(work / "corpus.jsonl", args.documents, args.seed)
        args.run = work / "synth"
        shutil.rmtree(args.run, ignore_errors=True)  # time a whole run, not a resume
        _, synth_rss = timed(cli("synth", corpus, "-o", args.run, "--method", "standard",
                                 "--tokenized", "-L", args.context_length, "--seed", args.seed))
    synth = json.loads((args.run / "timings.json").read_text())
    run_manifest = json.loads((args.run / "manifest.json").read_text())
    token_bytes = (args.run / "tokens-00000.parquet").stat().st_size
    rows = {}
    for fmt in FORMATS:
        out = work / f"export-{fmt}"
        shutil.rmtree(out, ignore_errors=True)
        wall, rss = timed(cli("export", args.run, "--to", fmt, "-o", out))
        t = json.loads((out / "timings.json").read_text())
        rows[fmt] = {"export_s": t["export_s"], "wall_s": round(wall, 2),
                     "tokens_per_s": t["tokens_per_s"], "peak_rss_mib": round(rss, 1),
                     "speedup_vs_synth": round(synth["total_s"] / t["export_s"], 1),
                     "speedup_vs_synth_wall": round(synth["total_s"] / wall, 1),
                     "output_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}
    result = {"documents": synth["documents"], "sequences": run_manifest["sequences"],
              "context_length": run_manifest["context_length"],
              "tokens": run_manifest["sequences"] * run_manifest["context_length"],
              "tokens_parquet_bytes": token_bytes, "synth_total_s": synth["total_s"],
              "synth_peak_rss_mib": round(synth_rss, 1) if synth_rss else None,
              "formats": rows, "machine": {"cpu": platform.processor() or platform.machine(),
                                           "cores": os.cpu_count(),
                                           "python": platform.python_version()}}
    print(f"synth: {result['documents']} documents -> {result['sequences']} sequences of "
          f"{result['context_length']} tokens in {synth['total_s']:.1f}s"
          + (f", peak RSS {synth_rss:.0f} MiB" if synth_rss else "")
          + f"; token ids {result['tokens'] * 4 / 2**20:.0f} MiB as int32")
    print(f"{'format':<10} {'export_s':>9} {'wall_s':>7} {'Mtok/s':>7} {'RSS MiB':>8} "
          f"{'x synth':>8} {'x (wall)':>8}")
    for fmt, r in rows.items():
        print(f"{fmt:<10} {r['export_s']:>9.2f} {r['wall_s']:>7.2f} "
              f"{r['tokens_per_s'] / 1e6:>7.2f} {r['peak_rss_mib']:>8.0f} "
              f"{r['speedup_vs_synth']:>8.1f} {r['speedup_vs_synth_wall']:>8.1f}")
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
