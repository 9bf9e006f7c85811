"""Typer commands ``score`` and ``filter`` (registered in :mod:`longforge.cli`)."""
from __future__ import annotations

from pathlib import Path

import typer

from longforge.cli_support import DEVICE_HELP, command, default_output, deprecated
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
    dtype: str = typer.Option("auto", help="auto (bf16/fp16 on GPU, fp32 on CPU), fp32, bf16, fp16."),
    batch_tokens: int = typer.Option(4096, help="Tokens per forward pass."),
    format: str = typer.Option("jsonl", help="Output format: jsonl, jsonl.gz, parquet."),
    num_shards: int = typer.Option(1, help="Output shards (units of parallelism and resume)."),
    workers: int = typer.Option(1, help="Processes (each loads the model)."),
    executor: str = typer.Option("local", help="local or ray."),
    input_old: list[Path] = typer.Option(None, "--input", "-i", hidden=True),
):
    """ProLong Long Dependency Score of every document (docs/prolong.md)."""
    from longforge.prolong.score import ScoreSettings, score_corpus

    inputs = deprecated(inputs, input_old, "--input/-i", "positional INPUTS")
    if not inputs:
        raise typer.BadParameter("give the corpus files or folders to score", param_hint="INPUTS")
    output = output or default_output("score")
    s = ScoreSettings(model=model, chunk_size=chunk_size, max_chunks=max_chunks, pairs=pairs,
                      threshold=threshold, seed=seed, path=path, device=device, dtype=dtype,
                      batch_tokens=batch_tokens, fmt=format)
    try:
        s.check()
        if num_shards < 1 or workers < 1:
            raise ValueError("--num-shards and --workers must be at least 1")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    m = score_corpus([str(p) for p in inputs], output, s, num_shards=num_shards, workers=workers,
                     executor=executor)
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
        m = filter_corpus(scores, [str(p) for p in corpus], output, keep=keep, threshold=threshold)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    say(f"LDS cutoff {m['lds_cutoff']}")
    typer.echo(f"kept {m['used']} of {m['inputs']} input documents "
               f"(dropped {m['dropped_by_reason']}); output in {output}")
