"""``longforge export``: a synth run as a trainer's dataset."""
from __future__ import annotations

from pathlib import Path

import typer

from longforge.cli_support import command, default_output


@command
def export(
    run: Path = typer.Argument(..., help="A finished `longforge synth` output folder."),
    to: str = typer.Option(..., "--to", help="megatron | mds | hf | datatrove."),
    output: Path = typer.Option(None, "--output", "-o", help="Output folder (default out/export/<run folder>-<format>)."),
    boundaries: str = typer.Option("sequence", help="What the trainer treats as one document (mds, hf, datatrove): sequence (the whole pack: attention across documents) | documents (every piece). Megatron: EOD tokens, masking by its own flags."),
    retokenize: bool = typer.Option(False, help="For a run made without --tokenized: tokenize its pieces from the run's text stores with its tokenizer."),
    batch_size: int = typer.Option(256, help="Sequences read at a time."),
):
    """Write a synth run as Megatron, MDS, Hugging Face or datatrove training data."""
    from longforge.export.core import check_options, export as run_export

    try:
        check_options(to, boundaries)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if batch_size < 1:
        raise typer.BadParameter("--batch-size must be at least 1")
    output = output or default_output("export", f"{run.name}-{to}")
    m = run_export(run, to, output, boundaries=boundaries, retokenize=retokenize,
                   batch_size=batch_size)
    typer.echo(f"{m['sequences']} sequences of {m['context_length']} tokens ({m['pieces']} "
               f"pieces, {m['pad_tokens']} pad tokens) -> {output} ({to}); read with "
               f"{m['read_with']}; manifest: {output / 'manifest.json'}")
