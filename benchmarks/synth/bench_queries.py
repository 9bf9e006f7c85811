"""Query prediction on this machine, every bundled path on the same segments, in one run.

Paths (greedy; N random sample-corpus documents, the first 256 Gemma tokens of each, the same
text for every path):

* ``gemma-fewshot-hf-today``: Gemma 3 270M, few-shot prompt, transformers, batch 8, left padding,
  the whole prompt prefilled for every segment (the path before the fast one);
* ``gemma-fewshot-hf-fast``: the same prompt and model, the few-shot prefix's KV computed once
  and copied into every batch, batches by length, batch 8;
* ``gemma-fewshot-llamacpp``: the same prompt on Gemma's GGUF with llama.cpp (``xllamacpp``);
* ``qwen-instruct-hf``: Qwen2.5-Coder-0.5B-Instruct, zero-shot chat prompt listing k queries,
  transformers fast path, batch 8;
* ``qwen-instruct-llamacpp``: the same on Qwen's GGUF with llama.cpp; ``...-k1``: one query;
* ``...-bf16``: the transformers fast path with the model in bf16 (``--dtype bf16``), whose
  matmuls run several times faster than fp32 on CPUs with AVX512-BF16 or AMX; it writes other
  queries than fp32 (the cache keys it apart).

For each: segments/s and queries/s (queries after post-processing), the speed-up over
``gemma-fewshot-hf-today``, the keyword yield (surviving keywords per segment with the default
filters, and the share of segments with one or more), the tokens it prefilled and decoded, and
its compute limit: FLOPs = 2 x non-embedding parameters x (prefilled + decoded tokens) + 2 x
hidden size x vocabulary x decoded tokens (the LM head; attention's own FLOPs, a few percent at
these lengths, are left out), over this CPU's matmul rate in the path's precision measured in the same run
(``torch.matmul`` of 2048 x 2048 matrices, torch's threads; fp32 for llama.cpp, which
multiplies quantized Q4_K_M weights, so its fraction of that limit can exceed what fp32 could
reach).

    python benchmarks/synth/bench_queries.py --segments 32 --threads 1 \\
        --out benchmarks/results/synth_queries

Writes ``bench.json`` (everything, with the queries of every path) and ``bench.md``.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import torch

from longforge.corpus import atomic_write_json, atomic_write_text, read_documents
from longforge.data import sample_corpus_path
from longforge.models import load_model
from longforge.synth.keywords import GENERIC_KEYWORDS, KeywordExtractor, PromptEcho
from longforge.synth.queries import (FEW_SHOT, CausalLMPredictor, InstructPredictor,
                                     parse_queries, segment_text)

PATHS = ("gemma-fewshot-hf-today", "gemma-fewshot-hf-fast", "gemma-fewshot-llamacpp",
         "gemma-fewshot-hf-fast-bf16", "qwen-instruct-hf", "qwen-instruct-llamacpp",
         "qwen-instruct-llamacpp-k1", "qwen-instruct-hf-bf16")
BASELINE = "gemma-fewshot-hf-today"


def pick_segments(n: int, seed: int, tokenizer, tokens: int) -> tuple[list[str], list[str]]:
    """The first ``tokens`` tokens of ``n`` seeded random sample-corpus documents (+1 for the
    warm-up), and their ids."""
    docs = list(read_documents(sample_corpus_path()))
    picks = random.Random(seed).sample(docs, n + 1)
    return [segment_text(d.text, tokenizer, tokens, 1)[0] for d in picks], [d.id for d in picks]


def matmul_gflops(size: int = 2048, reps: int = 5, dtype=torch.float32) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best / 1e9


def model_flops(model) -> dict:
    """Non-embedding parameters (the body) and the LM head's size (hidden x vocabulary)."""
    cfg = model.config
    body = sum(p.numel() for n, p in model.named_parameters()
               if "embed_tokens" not in n and "lm_head" not in n)
    return {"body_params": body, "lm_head_params": cfg.hidden_size * cfg.vocab_size}


def model_key(path: str) -> str:
    """The loaded model a path runs: gemma or qwen, fp32 or bf16."""
    return ("gemma" if path.startswith("gemma") else "qwen") + ("-bf16" if path.endswith("bf16") else "")


def make_predictor(path: str, lms: dict, args):
    kw = dict(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, segment_tokens=256,
              device="cpu", threads=args.llamacpp_threads)
    lm = lms[model_key(path)]
    if path.startswith("gemma"):
        if path.endswith("llamacpp"):   # the model's tokenizer only
            return CausalLMPredictor(args.gemma, engine="llamacpp", model=lm, **kw)
        fast = path != BASELINE
        return CausalLMPredictor(args.gemma, model=lm, reuse_prefix=fast, sort_by_length=fast, **kw)
    k = 1 if path.endswith("k1") else args.k
    if "llamacpp" in path:
        return InstructPredictor(args.qwen, k, engine="llamacpp", model=lm, **kw)
    return InstructPredictor(args.qwen, k, model=lm, **kw)


def queries_of(path: str, predictor, answers: list[str]) -> list[list[str]]:
    if path.startswith("gemma"):
        examples = {q for _, q in FEW_SHOT}
        return [[q] if q and q not in examples else [] for q in answers]
    return [parse_queries(a, predictor.k)[0] for a in answers]


def run_path(path: str, lms: dict, segs: list[str], args, extractor, echo) -> dict:
    t0 = time.perf_counter()
    p = make_predictor(path, lms, args)
    load_s = time.perf_counter() - t0
    p.predict(segs[-1:])   # warm-up (also computes the prompt's fixed part once)
    decoded = p.engine.stats["decode_tokens"]
    t0 = time.perf_counter()
    answers = p.predict(segs[:-1])
    wall = time.perf_counter() - t0
    # the tokens it must prefill: the fixed part once (fast paths) or with every segment
    rests = sum(len(p.rest(s)) for s in segs[:-1])
    prefill = rests + len(p.prefix) * (len(segs) - 1 if path == BASELINE else 1)
    stats = {"prefill_tokens": prefill, "decode_tokens": p.engine.stats["decode_tokens"] - decoded}
    queries = queries_of(path, p, answers)
    kws = []
    for qs in queries:
        k = extractor.document_keywords(qs)
        kws.append([x for x in k if not (echo and path.startswith("gemma") and echo(x))])
    n = len(segs) - 1
    f = model_flops(lms[model_key(path)].model)
    flops = (2 * f["body_params"] * (stats["prefill_tokens"] + stats["decode_tokens"])
             + 2 * f["lm_head_params"] * stats["decode_tokens"])
    return {"path": path, "engine": p.engine.name, "precision": precision(path),
            "settings": p.settings, "load_s": load_s,
            "wall_s": wall, "segments": n, "segments_per_s": n / wall,
            "queries": sum(map(len, queries)), "queries_per_s": sum(map(len, queries)) / wall,
            "keywords_per_segment": sum(map(len, kws)) / n,
            "segments_with_keyword": sum(bool(k) for k in kws) / n,
            "prefill_tokens": stats["prefill_tokens"], "decode_tokens": stats["decode_tokens"],
            "prefix_tokens": len(p.prefix), **f, "flops": flops,
            "answers": answers, "query_lists": queries, "keywords": kws}


def precision(path: str) -> str:
    return "q4_k_m" if "llamacpp" in path else ("bf16" if path.endswith("bf16") else "fp32")


def markdown(res: dict) -> str:
    lines = ["# Query prediction: speed, keyword yield and compute limit", "",
             f"{res['machine']}; {res['segments']} segments of 256 Gemma tokens (seed "
             f"{res['seed']}); matmul rate fp32 {res['matmul_gflops']:.1f} GFLOP/s, bf16 "
             f"{res['matmul_gflops_bf16']:.1f} GFLOP/s "
             f"(torch threads {res['torch_threads']}; llama.cpp threads "
             f"{res['llamacpp_threads']}).", "",
             "| path | weights | segments/s | queries/s | vs today | keywords / segment | segments "
             "with a keyword | prefill tokens | decode tokens | GFLOP | compute limit (s) | wall "
             "(s) | of the limit |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["paths"]:
        lines.append(
            f"| {r['path']} | {r['precision']} | {r['segments_per_s']:.3f} | {r['queries_per_s']:.3f} | "
            f"{r['speedup_vs_today']:.2f}x | {r['keywords_per_segment']:.2f} | "
            f"{100 * r['segments_with_keyword']:.0f}% | {r['prefill_tokens']} | "
            f"{r['decode_tokens']} | {r['flops'] / 1e9:.0f} | {r['compute_limit_s']:.1f} | "
            f"{r['wall_s']:.1f} | {100 * r['fraction_of_limit']:.0f}% |")
    same = res.get("fast_same_queries_as_today")
    if same is not None:
        lines += ["", f"The fast Gemma path wrote the same query as today's path for {same} of "
                  f"{res['segments']} segments (same prompt ids and greedy decoding; batching "
                  "and the reused prefix change floating-point rounding only)."]
    for name, n in res.get("bf16_same_queries_as_fp32", {}).items():
        lines += ["", f"{name} wrote the same answer as its fp32 path for {n} of "
                  f"{res['segments']} segments (bf16 rounds every product: other queries, "
                  "keyed apart in the cache)."]
    lines += ["", f"Command: `{res['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--segments", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--llamacpp-threads", type=int, default=0, help="0: as --threads")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--k", type=int, default=3, help="queries per segment (instruct)")
    ap.add_argument("--gemma", default="gemma-3-270m", help="the few-shot predictor")
    ap.add_argument("--qwen", default="qwen2.5-coder-0.5b-instruct", help="the instruct predictor")
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/synth_queries"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.llamacpp_threads = args.llamacpp_threads or torch.get_num_threads()
    paths = [p for p in args.paths.split(",") if p]
    unknown = set(paths) - set(PATHS)
    if unknown or BASELINE not in paths:
        ap.error(f"--paths: choose among {', '.join(PATHS)}, with {BASELINE}")
    lms = {"gemma": load_model(args.gemma, device="cpu", dtype="fp32")}
    for key in sorted({model_key(p) for p in paths} - {"gemma"}):
        spec = args.gemma if key.startswith("gemma") else args.qwen
        lms[key] = load_model(spec, device="cpu", dtype="bf16" if key.endswith("bf16") else "fp32")
    segs, ids = pick_segments(args.segments, args.seed, lms["gemma"].tokenizer, 256)
    rates = {"fp32": matmul_gflops(), "bf16": matmul_gflops(dtype=torch.bfloat16)}
    extractor = KeywordExtractor(extra_stop_keywords=GENERIC_KEYWORDS)
    echo = PromptEcho(extractor, [q for _, q in FEW_SHOT])
    rows = []
    for path in paths:
        r = run_path(path, lms, segs, args, extractor, echo)
        r["compute_limit_s"] = r["flops"] / (rates["bf16" if r["precision"] == "bf16" else "fp32"] * 1e9)
        r["fraction_of_limit"] = r["compute_limit_s"] / r["wall_s"]
        rows.append(r)
        print(f"{path}: {r['segments_per_s']:.3f} segments/s, {r['queries_per_s']:.3f} "
              f"queries/s, {r['keywords_per_segment']:.2f} keywords/segment", flush=True)
    base = next(r for r in rows if r["path"] == BASELINE)
    for r in rows:
        r["speedup_vs_today"] = r["segments_per_s"] / base["segments_per_s"]
    res = {"machine": f"{platform.processor() or platform.machine()}, CPU only",
           "segments": args.segments, "seed": args.seed, "document_ids": ids[:-1],
           "matmul_gflops": rates["fp32"], "matmul_gflops_bf16": rates["bf16"], "torch_threads": torch.get_num_threads(),
           "llamacpp_threads": args.llamacpp_threads, "paths": rows,
           "command": "python benchmarks/synth/bench_queries.py " + " ".join(argv or [])}
    fast = next((r for r in rows if r["path"] == "gemma-fewshot-hf-fast"), None)
    if fast is not None:
        res["fast_same_queries_as_today"] = sum(a == b for a, b in zip(fast["answers"], base["answers"]))
    by = {r["path"]: r for r in rows}
    res["bf16_same_queries_as_fp32"] = {
        p: sum(a == b for a, b in zip(by[p]["answers"], by[p.removesuffix("-bf16")]["answers"]))
        for p in by if p.endswith("-bf16") and p.removesuffix("-bf16") in by}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "bench.json", res)
    atomic_write_text(args.out / "bench.md", markdown(res))
    print(markdown(res))
    return res


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
