"""``longforge eval passkey|niah|ppl|report``: accuracy of KV policies on long contexts.

Runs are resumable: results go to ``OUT/results.jsonl`` one cell at a time and a rerun with the
same output folder skips finished cells. Long runs: start them in the background
(``nohup longforge eval passkey ... &``) and rerun after an interruption.
"""
from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Evaluate decode-time KV policies (dense, Quest, StreamingLLM, H2O) on "
                       "passkey retrieval, needle-in-a-haystack and perplexity.",
                  no_args_is_help=True)

_MODEL = typer.Option("gemma-3-270m", help="Model spec (see longforge.models).")
_METHODS = typer.Option("dense,quest,streaming,h2o",
                        help="Comma-separated policies: dense, quest, quest-rank, quest-head "
                             "(the GQA selection ablations), streaming, h2o.")
_BUDGETS = typer.Option("1/16,1/8,1/4", help="Token budgets: tokens (512) or fractions of the "
                                             "context length (1/8, rounded to whole pages), "
                                             "comma-separated.")
_PAGE = typer.Option(16, help="Quest page size (tokens).")
_DENSE = typer.Option("auto", help="Layers that decode densely (every policy): auto (the first "
                                   "two, plus the first full-attention layer on hybrid models "
                                   "such as Gemma 3), N (the first N by index) or full:N (the "
                                   "first N full-attention layers).")
_DEVICE = typer.Option(None, help="cpu / cuda (default: CUDA when present).")
_DTYPE = typer.Option(None, help="fp32 / bf16 / fp16 (default: fp32 on CPU).")


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _dense(spec: str):
    from longforge.sparse.policies import normalize_dense_layers

    try:
        return normalize_dense_layers(spec)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--dense-layers") from None


def _load(model: str, device, dtype):
    import torch

    from longforge.models import load_model

    torch.set_grad_enabled(False)
    return load_model(model, device=device, dtype=dtype)


def _grid(task: str, model, lengths, depths, trials, methods, budgets, out, tail, max_new,
          page_size, dense_layers, seed, device, dtype, settings=None):
    from longforge.evals import niah, passkey
    from longforge.evals.report import write_report
    from longforge.evals.runner import parse_methods, run_grid
    from longforge.progress import say

    mod = {"passkey": passkey, "niah": niah}[task]
    dense_layers = _dense(dense_layers)
    ms = parse_methods(methods, budgets)
    lm = _load(model, device, dtype)
    run_grid(task, lm.model, lm.tokenizer, mod.build, mod.score, _ints(lengths), _floats(depths),
             trials, ms, out, tail=tail, max_new=max_new, page_size=page_size,
             dense_layers=dense_layers, seed=seed, settings={"model": model, **(settings or {})})
    write_report(out)
    say(f"{task}: tables and heatmaps under {Path(out).resolve()}")
    typer.echo((Path(out) / "summary.md").read_text())


@app.command()
def passkey(model: str = _MODEL, lengths: str = typer.Option("2048,4096,8192"),
            depths: str = typer.Option("0,0.25,0.5,0.75,1"), trials: int = 1,
            methods: str = _METHODS, budgets: str = _BUDGETS,
            out: Path = typer.Option(Path("out/evals/passkey")),
            tail: int = typer.Option(64, help="Prompt tokens fed one at a time (decode path)."),
            max_new: int = 10, page_size: int = _PAGE, dense_layers: str = _DENSE, seed: int = 0,
            device: str = _DEVICE, dtype: str = _DTYPE):
    """Passkey retrieval (SPEC template) per method x budget x length x depth."""
    _grid("passkey", model, lengths, depths, trials, methods, budgets, out, tail, max_new,
          page_size, dense_layers, seed, device, dtype)


@app.command()
def niah(model: str = _MODEL, lengths: str = typer.Option("2048,4096,8192"),
         depths: str = typer.Option("0,0.25,0.5,0.75,1"), trials: int = 1,
         methods: str = _METHODS, budgets: str = _BUDGETS,
         out: Path = typer.Option(Path("out/evals/niah")),
         haystack: Path = typer.Option(None, help="Haystack text: corpus .jsonl[.gz], text file "
                                                  "or folder (default: the sample corpus)."),
         source: str = typer.Option("python-docs", help="Corpus documents of this source only "
                                                        "('' for all)."),
         tail: int = 64, max_new: int = 12, page_size: int = _PAGE, dense_layers: str = _DENSE,
         seed: int = 0, device: str = _DEVICE, dtype: str = _DTYPE):
    """RULER-style needle in a haystack of real text per method x budget x length x depth."""
    from longforge.evals import niah as mod

    mod.set_haystack(haystack, source or None)
    _grid("niah", model, lengths, depths, trials, methods, budgets, out, tail, max_new,
          page_size, dense_layers, seed, device, dtype,
          {"haystack": str(haystack or "sample corpus"), "source": source})


@app.command()
def ppl(model: str = _MODEL, lengths: str = typer.Option("4096", help="Context before scoring."),
        tokens: int = typer.Option(256, help="Tokens scored, fed one at a time."),
        methods: str = _METHODS, budgets: str = _BUDGETS,
        out: Path = typer.Option(Path("out/evals/ppl")),
        haystack: Path = typer.Option(None, help="Text to score (default: the sample corpus)."),
        source: str = typer.Option("python-docs", help="Longest document of this source."),
        page_size: int = _PAGE, dense_layers: str = _DENSE, device: str = _DEVICE,
        dtype: str = _DTYPE):
    """Perplexity of a long text decoded token by token under each budget."""
    from longforge.evals import niah as hay
    from longforge.evals import ppl as mod
    from longforge.evals.report import write_report
    from longforge.evals.runner import parse_methods

    hay.set_haystack(haystack, source or None)
    dense_layers = _dense(dense_layers)
    lm = _load(model, device, dtype)
    mod.run(lm.model, lm.tokenizer, _ints(lengths), tokens, parse_methods(methods, budgets), out,
            page_size, dense_layers, settings={"model": model, "source": source,
                                               "haystack": str(haystack or "sample corpus")})
    write_report(out)
    typer.echo((Path(out) / "summary.md").read_text())


@app.command()
def report(out: Path = typer.Argument(..., help="A folder holding results.jsonl.")):
    """Rebuild summary.json / summary.md / heatmaps from a (partial) results.jsonl."""
    from longforge.evals.report import write_report

    write_report(out)
    typer.echo((Path(out) / "summary.md").read_text())
