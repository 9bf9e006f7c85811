"""Typer commands ``score`` and ``filter`` (registered in :mod:`longforge.cli`)."""
from __future__ import annotations

from pathlib import Path

import typer

from longforge.cli_support import (CPUS_PER_TASK, DEVICE_HELP, DTYPE_HELP, EXECUTOR, RAY_ADDRESS,
                                   WORKERS, command, default_output, deprecated,
                                   split)
from longforge.progress import say


@command
def score(
    inputs: list[Path] = typer.Argument(None, help="Corpus files or folders (JSONL(.gz), "
                                                   "Parquet, text).", show_default=False),
    output: Path = typer.Option(None, "--output", "-o", help="Output folder (resumable; "
                                                             "default out/score)."),
    model: str = typer.Option("gemma-3-270m", help="Model spec: bundled name, .gguf file, "
                                                   "tiny-*, HF id or folder."),
    chunk_size: int = typer.Option(128, help="Tokens per chunk (c)."),
    max_chunks: int = typer.Option(256, help="Chunk window N; longer documents are sampled down."),
    pairs: int = typer.Option(5000, help="Pairs sampled per document (all when fewer)."),
    threshold: float = typer.Option(0.1, help="Dependency-strength threshold t."),
    seed: int = typer.Option(0, help="Seed of chunk and pair sampling."),
    path: str = typer.Option("fast", help="'fast' (KV reuse) or 'reference' (naive)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    batch_tokens: int = typer.Option(4096, help="Tokens per forward pass."),
    cross_document: bool = typer.Option(True, "--cross-document/--per-document",
                                        help="Score short documents several per forward pass "
                                             "(the same numbers up to float rounding; docs/prolong.md)."),
    format: str = typer.Option("jsonl", help="Output format: jsonl, jsonl.gz, parquet."),
    num_shards: int = typer.Option(1, help="Output shards (units of parallelism and resume)."),
    workers: int = WORKERS,
    executor: str = EXECUTOR, ray_address: str = RAY_ADDRESS,
    cpus_per_task: float = CPUS_PER_TASK,
    gpus_per_task: float = typer.Option(0.0, help="GPUs each shard asks of Ray (1: each scoring "
                                                  "task gets a GPU; fractions share one)."),
    input_old: list[Path] = typer.Option(None, "--input", "-i", hidden=True),
):
    """ProLong Long Dependency Score of every document (docs/prolong.md)."""
    from longforge.prolong.score import ScoreSettings, check_run, score_corpus

    inputs = deprecated(inputs, input_old, "--input/-i", "positional INPUTS")
    if not inputs:
        raise typer.BadParameter("give the corpus files or folders to score", param_hint="INPUTS")
    output = output or default_output("score")
    s = ScoreSettings(model=model, chunk_size=chunk_size, max_chunks=max_chunks, pairs=pairs,
                      threshold=threshold, seed=seed, path=path, device=device, dtype=dtype,
                      batch_tokens=batch_tokens, fmt=format, cross_document=cross_document)
    try:
        check_run(s, num_shards, executor, workers, cpus_per_task, gpus_per_task)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    m = score_corpus([str(p) for p in inputs], output, s, num_shards=num_shards, workers=workers,
                     executor=executor, ray_address=ray_address, cpus_per_task=cpus_per_task,
                     gpus_per_task=gpus_per_task)
    typer.echo(f"scored {m['used']} of {m['inputs']} input documents "
               f"(dropped {m['dropped_by_reason']}, skipped {m['skipped_by_reason']}); "
               f"scores in {output}")


@command
def filter_cmd(
    corpus: list[Path] = typer.Argument(None, help="The corpus that was scored.",
                                        show_default=False),
    scores: Path = typer.Option(..., help="Output folder (or file) of `longforge score`."),
    output: Path = typer.Option(None, "--output", "-o", help="Output folder (default out/filter)."),
    keep: float = typer.Option(None, help="Keep this top fraction by LDS (paper: 0.5)."),
    threshold: float = typer.Option(None, help="Keep documents with LDS >= this instead."),
    length_buckets: list[str] = typer.Option(None, help="Keep the top fraction within length "
                                                        "buckets: 'chunks' (one per chunk count) "
                                                        "or token-count edges, e.g. 1024,4096."),
    corpus_old: list[Path] = typer.Option(None, "--corpus", hidden=True),
):
    """Keep the documents with the highest LDS; writes the input's format plus a manifest."""
    from longforge.prolong.filter import filter_corpus

    corpus = deprecated(corpus, corpus_old, "--corpus", "positional CORPUS")
    if not corpus:
        raise typer.BadParameter("give the corpus that was scored", param_hint="CORPUS")
    output = output or default_output("filter")
    if keep is None and threshold is None:
        keep = 0.5
    try:
        m = filter_corpus(scores, [str(p) for p in corpus], output, keep=keep, threshold=threshold,
                          length_buckets=split(length_buckets) or None)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    for bucket, b in (m.get("buckets") or {"all lengths": {"lds_cutoff": m["lds_cutoff"]}}).items():
        say(f"LDS cutoff {b['lds_cutoff']} ({bucket})")
    typer.echo(f"kept {m['used']} of {m['inputs']} input documents "
               f"(dropped {m['dropped_by_reason']}); output in {output}")
