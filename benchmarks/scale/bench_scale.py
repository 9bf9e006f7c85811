"""How `longforge synth` scales with the number of documents (10^4, 10^5, 10^6 by default).

The corpus of each size is generated, deterministically (seed 0), from the sentences of the
bundled sample corpus (``longforge.data.sample_corpus_path()``): each document is 3 to 30
sentences of one source, and carries one of its sentences as a user query (``queries``), so
that quest can run on cached queries. It is written once as plain JSONL (splittable by byte
range) under ``--work``.

Each run is ``python -m longforge.cli synth`` in a subprocess; it reports the wall time of each
stage (``timings.json``: prepare, load, groups (index / faiss / grouping), pack + write), the
documents/s, tokens/s per core and per CPU-second, and the peak RSS of the driver and its local
worker processes (``os.wait4``; Ray workers are not its children and are not counted), with the
bundled tokenizer's model cache made before the first measured run. Methods:

* ``standard``, ``quest-document`` (keywords from the documents: ``--query-source document``),
  ``quest-user`` (keywords from the ``queries`` column, i.e. cached queries), ``knn``, ``iclm``;
* ``knn-fast``, ``iclm-fast``: the same with the faster embedding route (``--embed-max-tokens
  128 --embed-quantize int8``), ``knn-int8`` and ``knn-128`` with one of the two only; when a
  variant and its default ran at a size, the agreement of their neighbours (recall@10 of the
  default's exact top-10 over a sample of documents).

``--executors local,ray`` runs each method with both executors on the same input and checks
that the outputs are byte-identical. The checks of the scaling targets are printed at the end:
per-document time growth from each size to the next (target <= 1.3 for standard and
quest-document), peak RSS (target <= 2 GB), keywords + index tokens/s/core (target >= 20K).

    python benchmarks/scale/bench_scale.py --sizes 1000 --methods standard,quest-document
    python benchmarks/scale/bench_scale.py --sizes 10000,100000,1000000 \\
        --methods standard,quest-document,quest-user --out benchmarks/results/scale
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
from collections import defaultdict
from pathlib import Path

METHODS = {
    "standard": ["--method", "standard"],
    "quest-document": ["--method", "quest", "--query-source", "document"],
    "quest-user": ["--method", "quest", "--query-source", "user"],
    "knn": ["--method", "knn"],
    "iclm": ["--method", "iclm"],
    "knn-fast": ["--method", "knn", "--embed-max-tokens", "128", "--embed-quantize", "int8"],
    "iclm-fast": ["--method", "iclm", "--embed-max-tokens", "128", "--embed-quantize", "int8"],
    "knn-int8": ["--method", "knn", "--embed-quantize", "int8"],
    "knn-128": ["--method", "knn", "--embed-max-tokens", "128"],
}
GROWTH_TARGET, RSS_TARGET_GB, KEYWORD_TARGET = 1.3, 2.0, 20_000
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


def sample_sentences() -> dict[str, list[str]]:
    """Distinct sentences of 20 to 400 characters of the sample corpus, by source."""
    from longforge.data import sample_corpus_path

    by_source: dict[str, dict[str, None]] = defaultdict(dict)
    with gzip.open(sample_corpus_path(), "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            for s in _SENTENCE.split(rec["text"]):
                s = " ".join(s.split())
                if 20 <= len(s) <= 400:
                    by_source[rec.get("source") or "unknown"].setdefault(s, None)
    return {k: list(v) for k, v in sorted(by_source.items())}


def generate(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` documents from the sample corpus's sentences (see the module docstring)."""
    if path.exists():
        return path
    sentences = sample_sentences()
    sources = list(sentences)
    weights = [len(sentences[s]) for s in sources]
    rng = random.Random(seed)
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as fh:
        for i in range(n):
            src = rng.choices(sources, weights)[0]
            pool = sentences[src]
            start = rng.randrange(len(pool))
            body = [pool[(start + j) % len(pool)] for j in range(rng.randint(3, 30))]
            fh.write(json.dumps({"id": f"gen-{i:07d}", "text": " ".join(body), "source": src,
                                 "queries": [rng.choice(body)]}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def measure(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; its wall time, CPU seconds and peak RSS (with its waited-for children)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode(errors="replace")
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}):\n{out[-3000:]}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_gb": ru.ru_maxrss / 2**20}


def run_synth(corpus: Path, out: Path, method: str, executor: str, args) -> dict:
    cmd = [sys.executable, "-m", "longforge.cli", "synth", str(corpus), "-o", str(out), "-q",
           "--context-length", str(args.context_length), "--num-shards", str(args.shards),
           "--executor", executor, *METHODS[method]]
    if executor == "local":
        cmd += ["--workers", str(args.workers)]
    elif args.ray_address:
        cmd += ["--ray-address", args.ray_address]
    res = measure(cmd, {**os.environ, "LONGFORGE_QUIET": "1"})
    t = json.loads((out / "timings.json").read_text())
    docs, tokens = t["documents"], t["tokens"]
    cores = args.workers if executor == "local" else args.shards
    res.update(method=method, executor=executor, documents=docs, tokens=tokens,
               stages_s={k: t[k] for k in ("prepare_s", "load_s", "groups_s", "write_s")},
               docs_per_s=docs / res["wall_s"], us_per_doc=1e6 * res["wall_s"] / docs,
               tokens_per_s_per_core=tokens / res["wall_s"] / cores,
               tokens_per_cpu_s=tokens / res["cpu_s"] if res["cpu_s"] else None,
               command=" ".join(["python", *cmd[1:]]))  # not this machine's interpreter path
    if method.startswith("quest"):  # keywords (prepare) + index (groups), per core
        kw = t["prepare_s"] + t["groups_s"]
        res["keywords_index_tokens_per_s_per_core"] = tokens / kw / cores
    if method.startswith(("knn", "iclm")):
        res["embed_docs_per_s"] = docs / t["prepare_s"]
        res["faiss_and_groups_docs_per_s"] = docs / t["groups_s"] if t["groups_s"] else None
    return res


def neighbour_agreement(default: Path, fast: Path, k: int = 10, sample: int = 2000) -> float:
    """Recall@k of the fast embeddings' exact top-k against the default's, over ``sample``
    documents (the same rows of both runs' work/emb-*.npy)."""
    import faiss
    import numpy as np

    def load(d):
        return np.concatenate([np.load(p) for p in sorted((d / "work").glob("emb-*.npy"))])

    def top_k(emb, rows):
        index = faiss.IndexFlatIP(emb.shape[1])
        index.add(emb)
        return index.search(emb[rows], k + 1)[1][:, 1:]  # itself first

    a, b = load(default), load(fast)
    rows = np.random.default_rng(0).choice(len(a), size=min(sample, len(a)), replace=False)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(top_k(a, rows), top_k(b, rows))]))


def same_bytes(a: Path, b: Path) -> bool:
    names = [p.name for p in sorted(a.glob("sequences-*")) + sorted(a.glob("index-*"))]
    return bool(names) and all((a / n).read_bytes() == (b / n).read_bytes() for n in names) and \
        (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()


def checks(results: list[dict]) -> list[str]:
    lines = []
    by = defaultdict(dict)
    for r in results:
        by[(r["method"], r["executor"])][r["documents"]] = r
    for (method, ex), runs in sorted(by.items()):
        sizes = sorted(runs)
        for small, big in zip(sizes, sizes[1:]):
            g = runs[big]["us_per_doc"] / runs[small]["us_per_doc"]
            target = f" (target <= {GROWTH_TARGET})" if method in ("standard", "quest-document") else ""
            lines.append(f"{method}/{ex}: per-document time x{g:.2f} from {small} to {big} "
                         f"documents{target}")
        for n in sizes:
            r = runs[n]
            rss = f"{r['peak_rss_gb']:.2f} GB"
            target = f" (target <= {RSS_TARGET_GB} GB)" if method in ("standard", "quest-document") else ""
            lines.append(f"{method}/{ex} at {n}: peak RSS {rss}{target}")
            if "keywords_index_tokens_per_s_per_core" in r:
                lines.append(f"{method}/{ex} at {n}: keywords + index "
                             f"{r['keywords_index_tokens_per_s_per_core']:.0f} tokens/s/core "
                             f"(target >= {KEYWORD_TARGET})")
            if "embed_docs_per_s" in r:
                lines.append(f"{method}/{ex} at {n}: embedder {r['embed_docs_per_s']:.1f} docs/s, "
                             f"faiss + grouping {r['faiss_and_groups_docs_per_s'] or 0:.0f} docs/s")
    return lines


def table(results: list[dict]) -> str:
    head = ("| method | executor | documents | wall s | prepare s | load s | groups s | write s "
            "| docs/s | tokens/s/core | tokens/CPU-s | peak RSS GB |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        s = r["stages_s"]
        rows.append(f"| {r['method']} | {r['executor']} | {r['documents']} | {r['wall_s']:.1f} | "
                    f"{s['prepare_s']:.1f} | {s['load_s']:.1f} | {s['groups_s']:.1f} | "
                    f"{s['write_s']:.1f} | {r['docs_per_s']:.0f} | {r['tokens_per_s_per_core']:.0f} | "
                    f"{r['tokens_per_cpu_s'] or 0:.0f} | {r['peak_rss_gb']:.2f} |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--methods", default="standard,quest-document,quest-user,knn,iclm")
    ap.add_argument("--executors", default="local", help="local, ray or local,ray")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--shards", type=int, default=None, help="default: --workers")
    ap.add_argument("--context-length", type=int, default=8192)
    ap.add_argument("--ray-address", default=None, help="default: each run starts a local cluster")
    ap.add_argument("--work", type=Path, default=Path("out/bench/scale"))
    ap.add_argument("--out", type=Path, default=None, help="folder for results.json/.md "
                                                         "(default: --work)")
    args = ap.parse_args()
    args.shards = args.shards or args.workers
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    # The first use of a bundled model dequantizes its GGUF into the cache (a one-time peak of
    # about 3 GB); made here, outside the measured runs, which then load the cached tokenizer.
    subprocess.run([sys.executable, "-c", "from longforge.models import load_tokenizer; "
                    "from longforge.synth.config import SynthConfig; "
                    "load_tokenizer(SynthConfig.tokenizer)"], check=True, capture_output=True)
    results, notes = [], []
    for n in sizes:
        corpus = generate(args.work / f"corpus-{n}.jsonl", n)
        for method in methods:
            for ex in args.executors.split(","):
                out = args.work / f"{method}-{ex}-{n}"
                shutil.rmtree(out, ignore_errors=True)
                r = run_synth(corpus, out, method, ex, args)
                results.append(r)
                print(f"{method:15s} {ex:5s} {n:>8d} docs: {r['wall_s']:8.1f} s, "
                      f"{r['docs_per_s']:8.0f} docs/s, {r['tokens_per_s_per_core']:8.0f} tok/s/core, "
                      f"peak RSS {r['peak_rss_gb']:.2f} GB", flush=True)
            if "ray" in args.executors.split(",") and "local" in args.executors.split(","):
                same = same_bytes(args.work / f"{method}-local-{n}", args.work / f"{method}-ray-{n}")
                notes.append(f"{method} at {n}: local and ray outputs byte-identical: {same}")
        for variant in methods:
            base = variant.split("-")[0]
            if base in ("knn", "iclm") and variant != base and base in methods:
                for ex in args.executors.split(","):
                    rec = neighbour_agreement(args.work / f"{base}-{ex}-{n}",
                                              args.work / f"{variant}-{ex}-{n}")
                    notes.append(f"{variant} at {n} ({ex}): recall@10 of the default's "
                                 f"neighbours {rec:.3f}")
    report = {
        "corpus": "generated from the sentences of the bundled sample corpus "
                  "(benchmarks/scale/bench_scale.py generate(), seed 0: 3-30 sentences of one "
                  "source per document, one of them as its query)",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "settings": {"workers": args.workers, "shards": args.shards,
                     "context_length": args.context_length, "executors": args.executors},
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "results": results, "checks": checks(results), "notes": notes}
    dest = args.out or args.work
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    md = ["# synth at scale", "", report["corpus"] + ".", "", f"Machine: {report['machine']}; "
          f"settings: {report['settings']}.", "", table(results), "", "## Checks", ""]
    md += [f"- {line}" for line in report["checks"] + notes]
    (dest / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(report["checks"] + notes))
    print(f"results: {dest / 'results.json'}, {dest / 'results.md'}")


if __name__ == "__main__":
    main()
