"""Time to first token of a second question over a long document: with the document KV cache
(its prefix's KV restored, only the rest prefilled) vs without (the first question, whose whole
prompt is prefilled), in one run of one server.

    python benchmarks/serve/bench_ttft.py --model qwen --doc-tokens 16384 \\
        --output benchmarks/results/serve_ttft_cpu.json

The document is real sample-corpus text cut to ``--doc-tokens`` tokens. Both questions go, as
chat turns that hold the document and then the question, through the official openai client to
``longforge serve`` on a loopback port (in this process), streamed; time to first token is from
sending the request to the first chunk that carries text. Prints both, their ratio and the
prompt / cached / prefilled tokens of each, and writes them as JSON (``--output``). Exits 1 if
the ratio is below ``--min-speedup``. Run it alone on the machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import openai
import torch

from longforge.corpus import atomic_write_json, read_documents
from longforge.data import sample_corpus_path
from longforge.models import load_model
from longforge.serve.app import ServerConfig, background, create_app
from longforge.serve.engine import Engine, EngineSettings

QUESTIONS = ("What is the main subject of the text above? Answer in one sentence.",
             "Name one person, place or object that the text above mentions.")


def document(tokenizer, n_tokens: int) -> str:
    """Sample-corpus documents joined until ``n_tokens`` tokens, cut there."""
    ids: list[int] = []
    for d in read_documents(sample_corpus_path()):
        ids += tokenizer(d.text + "\n\n", add_special_tokens=False).input_ids
        if len(ids) >= n_tokens:
            return tokenizer.decode(ids[:n_tokens])
    sys.exit(f"the sample corpus has only {len(ids)} tokens")


def ask(client, model: str, doc: str, question: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    first, text, usage = None, [], None
    for chunk in client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"{doc}\n\n{question}"}],
            max_tokens=max_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - t0
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    return {"ttft_s": first, "total_s": time.perf_counter() - t0, "answer": "".join(text),
            "prompt_tokens": usage.prompt_tokens,
            "cached_tokens": usage.prompt_tokens_details.cached_tokens,
            "prefilled_tokens": usage.model_extra["prefilled_tokens"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen")
    ap.add_argument("--doc-tokens", type=int, default=16384)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--block-tokens", type=int, default=256)
    ap.add_argument("--prefill-chunk", type=int, default=2048)
    ap.add_argument("--token-budget", type=int, default=2048)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--min-speedup", type=float, default=20.0)
    ap.add_argument("--output", "-o", type=Path, default=Path("out/bench/serve_ttft.json"))
    args = ap.parse_args()

    lm = load_model(args.model, device=args.device)
    doc = document(lm.tokenizer, args.doc_tokens)
    settings = EngineSettings(token_budget=args.token_budget, block_tokens=args.block_tokens,
                              prefill_chunk=args.prefill_chunk,
                              max_prompt_tokens=args.doc_tokens + 1024)
    app = create_app(Engine(lm, settings), ServerConfig(args.model, request_timeout=3600))
    with background(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                               timeout=3600)
        client.chat.completions.create(model=args.model, max_tokens=2,  # warm-up, not timed
                                       messages=[{"role": "user", "content": "Hello"}])
        cold = ask(client, args.model, doc, QUESTIONS[0], args.max_tokens)
        warm = ask(client, args.model, doc, QUESTIONS[1], args.max_tokens)
    speedup = cold["ttft_s"] / warm["ttft_s"]
    result = {"model": args.model, "device": args.device, "dtype": str(lm.model.dtype),
              "doc_tokens": args.doc_tokens, "block_tokens": args.block_tokens,
              "prefill_chunk": args.prefill_chunk, "token_budget": args.token_budget,
              "without_cache": cold, "with_cache": warm, "ttft_speedup": speedup,
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": platform.machine(), "python": platform.python_version(),
              "command": "python benchmarks/serve/bench_ttft.py " + " ".join(sys.argv[1:])}
    atomic_write_json(args.output, result)
    for name, r in (("without the document cache (first question)", cold),
                    ("with the document cache (second question)", warm)):
        print(f"{name}: TTFT {r['ttft_s']:.2f} s; prompt {r['prompt_tokens']} tokens, "
              f"{r['cached_tokens']} from the cache, {r['prefilled_tokens']} prefilled")
    print(f"TTFT speedup: {speedup:.1f}x (target >= {args.min_speedup:g}x); results: "
          f"{args.output}")
    sys.exit(0 if speedup >= args.min_speedup else 1)


if __name__ == "__main__":
    main()
