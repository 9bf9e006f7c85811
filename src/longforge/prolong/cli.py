"""Typer commands ``score`` and ``filter`` (registered in :mod:`longforge.cli`)."""
from __future__ import annotations

from pathlib import Path

import typer

from longforge.progress import say


def score(
    input: list[Path] = typer.Option(..., "--input", "-i", help="Corpus file(s) or folder(s)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder (resumable)."),
    model: str = typer.Option("gemma-3-270m", help="Model spec: bundled Gemma, tiny-*, HF id or path."),
    chunk_size: int = typer.Option(128, help="Tokens per chunk (c)."),
    max_chunks: int = typer.Option(256, help="Chunk window N; longer documents are sampled down."),
    pairs: int = typer.Option(5000, help="Pairs sampled per document (all when fewer)."),
    threshold: float = typer.Option(0.1, help="Dependency-strength threshold t."),
    seed: int = typer.Option(0, help="Seed of chunk and pair sampling."),
    path: str = typer.Option("fast", help="'fast' (KV reuse) or 'reference' (naive)."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu, cuda."),
    dtype: str = typer.Option("auto", help="auto (bf16/fp16 on GPU, fp32 on CPU), fp32, bf16, fp16."),
    batch_tokens: int = typer.Option(4096, help="Tokens per forward pass."),
    format: str = typer.Option("jsonl", help="Output format: jsonl, jsonl.gz, parquet."),
    num_shards: int = typer.Option(1, help="Output shards (units of parallelism and resume)."),
    workers: int = typer.Option(1, help="Processes (each loads the model)."),
    executor: str = typer.Option("local", help="local or ray."),
):
    """ProLong Long Dependency Score of every document (SPEC.md section 2)."""
    from longforge.prolong.score import ScoreSettings, score_corpus

    s = ScoreSettings(model=model, chunk_size=chunk_size, max_chunks=max_chunks, pairs=pairs,
                      threshold=threshold, seed=seed, path=path, device=device, dtype=dtype,
                      batch_tokens=batch_tokens, fmt=format)
    try:
        m = score_corpus([str(p) for p in input], output, s, num_shards=num_shards,
                         workers=workers, executor=executor)
    except (ValueError, FileNotFoundError, TypeError) as exc:  # TypeError: a model the fast
        # path cannot reproduce (it says to use --path reference)
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"scored {m['used']} of {m['inputs']} input documents "
               f"(dropped {m['dropped_by_reason']}, skipped {m['skipped_by_reason']}); "
               f"scores in {output}")


def filter_cmd(
    scores: Path = typer.Option(..., help="Output folder (or file) of `longforge score`."),
    corpus: list[Path] = typer.Option(..., help="The corpus that was scored."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder."),
    keep: float = typer.Option(None, help="Keep this top fraction by LDS (paper: 0.5)."),
    threshold: float = typer.Option(None, help="Keep documents with LDS >= this instead."),
):
    """Keep the documents with the highest LDS; writes the input's format plus a manifest."""
    from longforge.prolong.filter import filter_corpus

    if keep is None and threshold is None:
        keep = 0.5
    try:
        m = filter_corpus(scores, [str(p) for p in corpus], output, keep=keep, threshold=threshold)
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    say(f"LDS cutoff {m['lds_cutoff']}")
    typer.echo(f"kept {m['used']} of {m['inputs']} input documents "
               f"(dropped {m['dropped_by_reason']}); output in {output}")
