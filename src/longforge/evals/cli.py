"""``longforge eval passkey|niah|ppl|report``: accuracy of KV policies on long contexts.

Runs are resumable: results go to ``OUTPUT/results.jsonl`` one cell at a time and a rerun with
the same output folder skips finished cells. Long runs: start them in the background
(``nohup longforge eval passkey ... &``) and rerun after an interruption; ``--num-shards N``
splits a passkey or NIAH grid among N jobs (local processes or Ray tasks, by ``--executor``),
each appending to its own ``results.<k>-of-<n>.jsonl`` in the same folder.
"""
from __future__ import annotations

from pathlib import Path

import typer

from longforge.cli_support import (CPUS_PER_TASK, DEVICE_HELP, DTYPE_HELP, EXECUTOR,
                                   GPUS_PER_TASK, RAY_ADDRESS, WORKERS, command, default_output,
                                   default_workers, deprecated, split)

app = typer.Typer(help="Evaluate decode-time KV policies (dense, Quest, StreamingLLM, H2O, TOVA, "
                       "SnapKV) on passkey retrieval, needle-in-a-haystack and perplexity.",
                  no_args_is_help=True)

_MODEL = typer.Option("gemma-3-270m", help="Model spec (bundled name, .gguf file, HF id or "
                                           "folder; see docs/models.md).")
_METHODS = typer.Option(["dense,quest,streaming,h2o"],
                        help="Policies: dense, quest, quest-rank, quest-head (the GQA selection "
                             "ablations), streaming, h2o, tova, snapkv (compressing with the "
                             "question in its window), snapkv-context (compressing the context "
                             "before the question); name@budget for one budget only "
                             "(comma-separated or repeated).")
_BUDGETS = typer.Option(["1/16,1/8,1/4"], help="Token budgets: tokens (512) or fractions of the "
                                               "context length (1/8, rounded to whole pages).")
_PAGE = typer.Option(16, help="Quest page size (tokens).")
_DENSE = typer.Option("auto", help="Layers that decode densely (every policy): auto (the first "
                                   "two, plus the first full-attention layer on hybrid models "
                                   "such as Gemma 3), N (the first N by index) or full:N (the "
                                   "first N full-attention layers).")
_DEVICE = typer.Option("auto", help=DEVICE_HELP)
_DTYPE = typer.Option("auto", help=DTYPE_HELP)
_OUTPUT = typer.Option(None, "--output", "-o", help="Output folder (resumable; default "
                                                    "out/eval/<task>).")
_OUT_OLD = typer.Option(None, "--out", hidden=True)
_NUM_SHARDS = typer.Option(1, help="Split the samples among this many jobs (round robin), run "
                                    "by --executor in --workers processes or Ray tasks that "
                                    "write into one folder, each to results.<k>-of-<n>.jsonl.")
_HAYSTACK = typer.Option(None, help="Haystack text: corpus .jsonl[.gz], text file or folder "
                                    "(default: the sample corpus).")


def _dense(spec: str):
    from longforge.sparse.policies import normalize_dense_layers

    try:
        return normalize_dense_layers(spec)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--dense-layers") from None


def _methods(methods, budgets):
    from longforge.evals.runner import parse_methods

    try:
        return parse_methods(",".join(split(methods)), ",".join(split(budgets)))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--methods/--budgets") from None


def _load(model: str, device, dtype):
    import torch

    from longforge.models import load_model

    torch.set_grad_enabled(False)
    return load_model(model, device=device, dtype=dtype)


def _output(task: str, output, out_old) -> Path:
    return deprecated(output, out_old, "--out", "--output/-o") or default_output("eval", task)


def _grid(task: str, model, lengths, depths, trials, methods, budgets, out, tail, max_new,
          page_size, dense_layers, seed, device, dtype, run, settings=None, haystack=None,
          variant="single", needles=4):
    from longforge.evals import niah, passkey
    from longforge.evals.grid import GridJob
    from longforge.evals.report import write_report
    from longforge.executor import make_executor
    from longforge.models import load_tokenizer
    from longforge.progress import say

    ms = _methods(methods, budgets)
    job = GridJob(task, model, tuple(split(lengths, int)), tuple(split(depths, float)), trials,
                  ",".join(m.label for m in ms), str(out), tail, max_new, page_size,
                  _dense(dense_layers), seed, device, dtype, settings or {}, haystack, variant,
                  needles)
    if any(m.context_only for m in ms):
        tok = load_tokenizer(model)
        q = (passkey.question_tokens(tok) if task == "passkey"
             else niah.question_tokens(tok, variant))
        if tail < q:
            raise typer.BadParameter(f"{tail} is shorter than the question ({q} tokens): a "
                                     "-context method would compress with part of it in view",
                                     param_hint="--tail")
    num_shards, executor, workers, ray_address, cpus, gpus = run
    if num_shards < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--num-shards")
    try:
        ex = make_executor(executor, default_workers(workers, executor), None, desc=task,
                           ray_address=ray_address, cpus_per_task=cpus, gpus_per_task=gpus)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if num_shards == 1 and ex.kind == "local":
        job()  # in this process, without a shard progress bar
    else:
        ex.run(job, num_shards)
    write_report(out)
    say(f"{task}: tables and heatmaps under {Path(out).resolve()}")
    typer.echo((Path(out) / "summary.md").read_text())


@app.command()
@command
def passkey(model: str = _MODEL, lengths: list[str] = typer.Option(["2048,4096,8192"]),
            depths: list[str] = typer.Option(["0,0.25,0.5,0.75,1"]), trials: int = 1,
            methods: list[str] = _METHODS, budgets: list[str] = _BUDGETS,
            output: Path = _OUTPUT,
            tail: int = typer.Option(64, help="Prompt tokens fed one at a time (decode path)."),
            max_new: int = 10, page_size: int = _PAGE, dense_layers: str = _DENSE, seed: int = 0,
            device: str = _DEVICE, dtype: str = _DTYPE, num_shards: int = _NUM_SHARDS,
            workers: int = WORKERS, executor: str = EXECUTOR, ray_address: str = RAY_ADDRESS,
            cpus_per_task: float = CPUS_PER_TASK, gpus_per_task: float = GPUS_PER_TASK,
            out_old: Path = _OUT_OLD):
    """Passkey retrieval (Landmark Attention / Quest template) per method x budget x length x
    depth."""
    _grid("passkey", model, lengths, depths, trials, methods, budgets,
          _output("passkey", output, out_old), tail, max_new, page_size, dense_layers, seed,
          device, dtype, (num_shards, executor, workers, ray_address, cpus_per_task,
                          gpus_per_task))


@app.command()
@command
def niah(model: str = _MODEL, lengths: list[str] = typer.Option(["2048,4096,8192"]),
         depths: list[str] = typer.Option(["0,0.25,0.5,0.75,1"]), trials: int = 1,
         methods: list[str] = _METHODS, budgets: list[str] = _BUDGETS,
         output: Path = _OUTPUT, haystack: Path = _HAYSTACK,
         source: str = typer.Option("python-docs", help="Corpus documents of this source only "
                                                        "('' for all)."),
         variant: str = typer.Option("single", help="single (one needle), multikey (distractor "
                                                    "needles with other keys), multivalue (one "
                                                    "key, several values, all asked for)."),
         needles: int = typer.Option(4, help="Needles of multikey / multivalue."),
         tail: int = 64, max_new: int = typer.Option(None, help="Longest answer in tokens "
                                                               "(default 12; multivalue 16 "
                                                               "per needle)."),
         page_size: int = _PAGE, dense_layers: str = _DENSE,
         seed: int = 0, device: str = _DEVICE, dtype: str = _DTYPE,
         num_shards: int = _NUM_SHARDS, workers: int = WORKERS, executor: str = EXECUTOR,
         ray_address: str = RAY_ADDRESS, cpus_per_task: float = CPUS_PER_TASK,
         gpus_per_task: float = GPUS_PER_TASK, out_old: Path = _OUT_OLD):
    """RULER-style needles in a haystack of real text per method x budget x length x depth."""
    task, hay, extra, max_new = _niah_setup(variant, needles, haystack, source, max_new)
    _grid(task, model, lengths, depths, trials, methods, budgets, _output(task, output, out_old),
          tail, max_new, page_size, dense_layers, seed, device, dtype,
          (num_shards, executor, workers, ray_address, cpus_per_task, gpus_per_task), extra,
          haystack=hay, variant=variant, needles=needles)


def _niah_setup(variant: str, needles: int, haystack, source: str, max_new):
    """``(task, Haystack, settings, max_new)`` of NIAH options, checked."""
    from longforge.evals.niah import VALUE_DIGITS, VARIANTS, Haystack

    if variant not in VARIANTS:
        raise typer.BadParameter(f"choose one of {sorted(VARIANTS)}", param_hint="--variant")
    if needles < 2 and variant != "single":
        raise typer.BadParameter("multikey and multivalue need at least 2", param_hint="--needles")
    hay = Haystack(str(haystack) if haystack else None, source or None)
    extra = {"haystack": hay.describe(), "source": source}
    if variant != "single":
        extra.update(variant=variant, needles=needles)
    if variant == "multivalue":  # results made with the older stop rule do not resume here
        extra["stop"] = f"{needles} numbers of {VALUE_DIGITS}+ digits"
    # a listed value costs up to 13 tokens with a tokenizer of single digits ("  1. 9035508\n")
    max_new = max_new or (16 * needles if variant == "multivalue" else 12)
    return VARIANTS[variant], hay, extra, max_new


@app.command()
@command
def pages(model: str = _MODEL, lengths: list[str] = typer.Option(["4096"]),
          depths: list[str] = typer.Option(["0.5"]), trials: int = 1,
          methods: list[str] = typer.Option(["dense,quest"]),
          budgets: list[str] = typer.Option(["1024"], help=_BUDGETS.help),
          output: Path = _OUTPUT, haystack: Path = _HAYSTACK,
          source: str = typer.Option("python-docs", help="Corpus documents of this source only "
                                                         "('' for all)."),
          variant: str = typer.Option("multikey", help="single, multikey or multivalue (as "
                                                       "eval niah)."),
          needles: int = typer.Option(4, help="Needles of multikey / multivalue."),
          tail: int = 64, max_new: int = typer.Option(None, help="Longest answer in tokens (as "
                                                                 "eval niah)."),
          page_size: int = _PAGE, dense_layers: str = _DENSE, seed: int = 0,
          device: str = _DEVICE, dtype: str = _DTYPE):
    """Where Quest reads: for eval niah's samples (same length, depth, trial and seed), whether
    the pages each layer selects hold each needle's value, and the exact attention it gets."""
    from longforge.evals import pages as mod
    from longforge.evals.grid import score_for, stop_for

    task, hay, extra, max_new = _niah_setup(variant, needles, haystack, source, max_new)
    ms = _methods(methods, budgets)
    for m in ms:
        if not mod.traceable(m.policy(1, page_size, _dense(dense_layers))):
            raise typer.BadParameter(f"{m.label}: only dense and Quest choose pages",
                                     param_hint="--methods")
    out = output or default_output("eval", f"{task}-pages")
    lm = _load(model, device, dtype)
    mod.run(lm.model, lm.tokenizer, task, variant, needles, hay, split(lengths, int),
            split(depths, float), trials, ms, out, tail, max_new, page_size,
            _dense(dense_layers), seed, stop_for(lm.tokenizer, variant, needles), score_for(task),
            settings={"model": model, **extra})
    typer.echo(mod.write_report(out))


@app.command()
@command
def ppl(model: str = _MODEL,
        lengths: list[str] = typer.Option(["4096"], help="Context before scoring."),
        tokens: int = typer.Option(256, help="Tokens scored, fed one at a time."),
        methods: list[str] = _METHODS, budgets: list[str] = _BUDGETS,
        output: Path = _OUTPUT,
        haystack: Path = typer.Option(None, help="Text to score (default: the sample corpus)."),
        source: str = typer.Option("python-docs", help="Longest document of this source."),
        text: str = typer.Option("longest", help="longest (the longest document) or stream (the "
                                                 "documents concatenated in order, for contexts "
                                                 "longer than any one document)."),
        page_size: int = _PAGE, dense_layers: str = _DENSE, device: str = _DEVICE,
        dtype: str = _DTYPE, out_old: Path = _OUT_OLD):
    """Perplexity of a long text decoded token by token under each budget."""
    from longforge.evals import ppl as mod
    from longforge.evals.niah import Haystack
    from longforge.evals.report import write_report

    out = _output("ppl", output, out_old)
    hay = Haystack(str(haystack) if haystack else None, source or None)
    ms, dense = _methods(methods, budgets), _dense(dense_layers)
    if any(m.context_only for m in ms):
        raise typer.BadParameter("perplexity has no question: snapkv already compresses the "
                                 "context alone there", param_hint="--methods")
    lm = _load(model, device, dtype)
    if text not in mod.TEXTS:
        raise typer.BadParameter(f"choose one of {mod.TEXTS}", param_hint="--text")
    mod.run(lm.model, lm.tokenizer, split(lengths, int), tokens, ms, out, page_size, dense,
            settings={"model": model, "source": source, "haystack": hay.describe()},
            haystack=hay, text=text)
    write_report(out)
    typer.echo((Path(out) / "summary.md").read_text())


@app.command()
@command
def report(output: Path = typer.Argument(..., help="A folder holding results.jsonl.")):
    """Rebuild summary.json / summary.md / heatmaps from a (partial) results.jsonl."""
    from longforge.evals.report import write_report

    write_report(output)
    typer.echo((Path(output) / "summary.md").read_text())
