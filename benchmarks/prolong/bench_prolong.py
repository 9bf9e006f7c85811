"""Reference vs fast ProLong scoring, same documents, same run.

    python benchmarks/prolong/bench_prolong.py \
        --docs 4 --chunks 8 --out benchmarks/results/prolong_cpu

Documents: real sample-corpus documents (round-robin over its domains) cut to exactly
``chunks * chunk_size`` tokens, so both paths do the same work per document. Prints and writes
documents/s and tokens/s of each path, the speedup, and how far apart their LDS values are.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from longforge.corpus import atomic_write_json, atomic_write_text, read_documents
from longforge.data import sample_corpus_path
from longforge.models import load_model
from longforge.prolong.score import ScoreSettings, make_scorer, score_document


def pick_documents(tok, n_docs: int, n_tokens: int) -> list[tuple[str, list[int]]]:
    by_source: dict[str, list] = {}
    for d in read_documents(sample_corpus_path()):
        if len(d.text) > 5 * n_tokens:  # cheap pre-check before tokenizing
            by_source.setdefault(d.source, []).append(d)
    out, k, sources = [], 0, sorted(by_source)
    while len(out) < n_docs and k < 1000:
        docs = by_source[sources[k % len(sources)]]
        if k // len(sources) < len(docs):
            d = docs[k // len(sources)]
            ids = tok(d.text, add_special_tokens=False)["input_ids"]
            if len(ids) >= n_tokens:
                out.append((d.id, ids[:n_tokens]))
        k += 1
    if len(out) < n_docs:
        sys.exit(f"only {len(out)} sample documents have {n_tokens} tokens")
    return out


def run(path: str, lm, docs, s: ScoreSettings) -> dict:
    s = ScoreSettings(**{**s.__dict__, "path": path})
    scorer = make_scorer(lm.model, s)
    score_document("warmup", docs[0][1][: 2 * s.chunk_size], scorer, s)  # not timed
    t0 = time.perf_counter()
    recs = [score_document(i, ids, scorer, s) for i, ids in docs]
    dt = time.perf_counter() - t0
    tokens = sum(len(ids) for _, ids in docs)
    return {"seconds": dt, "docs_per_s": len(docs) / dt, "tokens_per_s": tokens / dt,
            "lds": {r["id"]: r["lds"] for r in recs},
            "pairs_per_doc": recs[0]["pairs_scored"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--docs", type=int, default=4)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--chunk-size", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=5000)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    a = ap.parse_args()
    lm = load_model(a.model, device=None if a.device == "auto" else a.device)
    dev = next(lm.model.parameters())
    docs = pick_documents(lm.tokenizer, a.docs, a.chunks * a.chunk_size)
    s = ScoreSettings(model=a.model, chunk_size=a.chunk_size, pairs=a.pairs,
                      batch_tokens=a.batch_tokens)
    res = {p: run(p, lm, docs, s) for p in ("reference", "fast")}
    rel = max(abs(res["fast"]["lds"][i] - res["reference"]["lds"][i])
              / max(abs(res["reference"]["lds"][i]), 1e-9) for i, _ in docs)
    speedup = res["fast"]["docs_per_s"] / res["reference"]["docs_per_s"]
    env = {"device": str(dev.device), "dtype": str(dev.dtype).replace("torch.", ""),
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
    report = {"command": "python " + " ".join(sys.argv), "model": a.model, "documents": [i for i, _ in docs],
              "chunks_per_doc": a.chunks, "chunk_size": a.chunk_size, "pairs": a.pairs,
              "pairs_per_doc": res["fast"]["pairs_per_doc"], "env": env, "results": res,
              "speedup_docs_per_s": speedup, "max_rel_lds_diff": rel}
    lines = [f"# ProLong scoring: reference vs fast ({env['device']}, {env['dtype']}, "
             f"{env['threads']} threads)", "",
             f"Command: `{report['command']}`", "",
             f"{a.docs} sample-corpus documents x {a.chunks} chunks x {a.chunk_size} tokens, "
             f"{report['pairs_per_doc']} pairs per document, model {a.model}.", "",
             "| path | seconds | documents/s | tokens/s |", "|---|---|---|---|"]
    for p in ("reference", "fast"):
        r = res[p]
        lines.append(f"| {p} | {r['seconds']:.1f} | {r['docs_per_s']:.4f} | {r['tokens_per_s']:.1f} |")
    lines += ["", f"Speedup (documents/s, fast / reference): **{speedup:.2f}x**; "
              f"largest relative LDS difference between the paths: {rel:.1e}.", ""]
    text = "\n".join(lines)
    print(text)
    if a.out:
        atomic_write_json(Path(a.out + ".json"), report)
        atomic_write_text(Path(a.out + ".md"), text)


if __name__ == "__main__":
    main()
