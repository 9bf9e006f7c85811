"""Throughput of `longforge synth` on this machine's CPU (run it alone on the machine):

* keywords + index: documents/s of the quest prepare step (read, tokenize with the target
  tokenizer, RAKE + filters, representative keyword, text store) plus the inverted index, with
  keywords taken from the documents themselves (`--query-source document`); baseline in the same
  run: reading + tokenizing only;
* query prediction: queries/s of the bundled Gemma 3 270M (few-shot, 256-token segments,
  greedy, 32 new tokens at most) at batch 8; baseline in the same run: batch 1.

    python benchmarks/synth/bench_throughput.py --out benchmarks/results/synth_throughput.json
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from longforge.corpus import atomic_write_json, read_documents
from longforge.data import sample_corpus_path
from longforge.models import load_tokenizer
from longforge.synth.config import SynthConfig
from longforge.synth.pipeline import run
from longforge.synth.queries import CausalLMPredictor, segment_text


def read_and_tokenize(corpus) -> tuple[int, float]:
    tok, t0, n = load_tokenizer("gemma-3-270m"), time.perf_counter(), 0
    for d in read_documents(corpus):
        tok(d.text, add_special_tokens=False)
        n += 1
    return n, time.perf_counter() - t0


def keywords_and_index(corpus, tmp: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    m = run(SynthConfig(inputs=[str(corpus)], output=tmp / "kw", method="quest",
                        query_source="document", max_segments=4, context_length=8192))
    return m["read"], time.perf_counter() - t0


def predict(segments, batch_size) -> float:
    p = CausalLMPredictor(batch_size=batch_size, device="cpu")
    p.predict(segments[:2])  # warm-up
    t0 = time.perf_counter()
    p.predict(segments)
    return len(segments) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--segments", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/synth_throughput.json"))
    args = ap.parse_args()
    corpus = sample_corpus_path()
    n, t_base = read_and_tokenize(corpus)
    with tempfile.TemporaryDirectory() as tmp:
        n2, t_kw = keywords_and_index(corpus, Path(tmp))
    tok = load_tokenizer("gemma-3-270m")
    segs = []
    for d in read_documents(corpus):
        segs += segment_text(d.text, tok, 256, 1)
        if len(segs) >= args.segments:
            break
    q1, q8 = predict(segs[:max(4, args.segments // 4)], 1), predict(segs, 8)
    res = {"machine": f"{platform.processor() or platform.machine()}, torch threads "
                      f"{torch.get_num_threads()}, CPU only",
           "corpus": "sample corpus (all documents)",
           "read_tokenize_docs_per_s": n / t_base,
           "keywords_index_docs_per_s": n2 / t_kw,
           "keywords_index_vs_read_tokenize": (n2 / t_kw) / (n / t_base),
           "predict_queries_per_s_batch1": q1, "predict_queries_per_s_batch8": q8,
           "predict_batch8_vs_batch1": q8 / q1, "segments": len(segs),
           "command": "python benchmarks/synth/bench_throughput.py"}
    atomic_write_json(args.out, res)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
