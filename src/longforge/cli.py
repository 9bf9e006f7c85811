"""The ``longforge`` command. Each method package contributes its own subcommands."""
from __future__ import annotations

import logging

import typer

from longforge.progress import set_quiet

app = typer.Typer(
    name="longforge",
    help="Long-context LLM toolkit: synthesize long-context training data (Quest), score "
         "documents for long dependencies (ProLong), and decode long contexts with "
         "query-aware sparse attention (Quest).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


@app.callback()
def main(quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or status."),
         log_level: str = typer.Option("WARNING", help="Python logging level: DEBUG, INFO, "
                                                       "WARNING, ERROR.")) -> None:
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        raise typer.BadParameter(f"unknown level {log_level!r}: DEBUG, INFO, WARNING, ERROR",
                                 param_hint="--log-level")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    set_quiet(quiet)


def _register() -> None:
    # Each package owns its subcommands; this is the only list of them.
    from longforge.demo import demo

    app.command(help="Run the main job on the bundled model and sample corpus.")(demo)
    from longforge.evals.cli import app as eval_app

    app.add_typer(eval_app, name="eval")
    from longforge.synth.cli import synth

    app.command(help="Quest query-centric long-context data synthesis and baselines.")(synth)
    from longforge.analyze.cli import analyze

    app.command(help="Compare synth outputs: similarity, domains, keywords, t-SNE.")(analyze)
    from longforge.prolong.cli import filter_cmd, score

    app.command(name="score", help="ProLong long-dependency score of every document.")(score)
    app.command(name="filter", help="Keep the documents with the highest LDS.")(filter_cmd)
    from longforge.export.cli import export

    app.command(name="export", help="A synth run as Megatron, MDS, HF or datatrove training data.")(export)
    from longforge.bench.cli import app as bench_app

    app.add_typer(bench_app, name="bench")
    from longforge.serve.cli import serve

    app.command(help="OpenAI-compatible server: chat and completions with Quest decoding and "
                     "a document KV cache.")(serve)


_register()

if __name__ == "__main__":
    app()
