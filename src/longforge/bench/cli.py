"""``longforge bench attention|profile|decode``: speed, as ratios against a baseline timed in the
same run. Run them alone on the machine (other jobs skew the timings); see docs/speed.md.

Outputs go to ``--output/-o`` (default ``out/bench/<name>``), a run folder
(:mod:`longforge.runs`): a rerun with the same settings replaces the results, one with other
settings is refused.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import typer

from longforge.cli_support import command, default_output, deprecated, split

app = typer.Typer(help="Speed benchmarks: decode attention and end-to-end decode, dense vs "
                       "Quest (ratios against a baseline measured in the same run).",
                  no_args_is_help=True)


_OUT_OLD = typer.Option(None, "--out", hidden=True)


def _ints(values) -> list[int]:
    return split(values, int)


def _strs(values) -> list[str]:
    return split(values)


def _output(name: str, output, out_old) -> Path:
    return deprecated(output, out_old, "--out", "--output/-o") or default_output("bench", name)


def _require_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise typer.BadParameter(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        typer.echo("no CUDA GPU found: nothing was measured (run with --device cpu, or on a "
                   "machine with a CUDA GPU for the Triton kernels)", err=True)
        raise typer.Exit(2)
    return device


@contextmanager
def _usage_errors(hint: str):
    """Bad settings (``ValueError``) and a C kernel that cannot be built (with ``hint``) become
    usage errors."""
    from longforge.sparse.backends.c_cpu import KernelBuildError

    try:
        yield
    except KernelBuildError as exc:
        raise typer.BadParameter(f"{exc}\n({hint})") from exc
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _run(name: str, bench, settings, write, markdown, out: Path, files: str, hint: str,
         check=None) -> None:
    """Run one benchmark; bad settings and a C kernel that cannot be built become usage
    errors; then write the results (a run folder) and print the Markdown. ``check()`` validates
    the settings before anything is written, and may return them resolved (``auto`` made
    concrete), as they are pinned and run."""
    from dataclasses import asdict

    from longforge.runs import RunFolder

    with _usage_errors(hint):
        if check is not None:
            settings = check() or settings
    run = RunFolder(out, f"bench {name}")
    run.pin({k: v for k, v in asdict(settings).items() if k != "out"})
    with _usage_errors(hint):
        result = bench.run(settings)
    write(result, out)
    run.write_manifest({"command": result["meta"]["command"], "files": files.split(", ")})
    typer.echo(markdown(result))
    typer.echo(f"\nresults: {out}/{files}")


@app.command()
@command
def attention(
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu (PyTorch / C "
                                            "kernels) or cuda (Triton)."),
    shapes: list[str] = typer.Option(["32x128,32/8x128"], help="Head shapes: HQxD (MHA) or "
                                                               "HQ/HKVxD."),
    contexts: list[str] = typer.Option(["8192,32768,131072"], help="Context lengths (tokens)."),
    budgets: list[str] = typer.Option(["256,512,1024,2048,4096"], help="Quest token budgets."),
    kernels: list[str] = typer.Option(["torch,c"], help="Quest CPU kernels to time: torch, c "
                                                        "(the C kernel is built on first use)."),
    repeats: int = typer.Option(40, help="Timed calls per method (median)."),
    warmup: int = typer.Option(3, help="Untimed rounds first."),
    page_size: int = typer.Option(16, help="Quest page size (tokens)."),
    flush_mb: int = typer.Option(128, help="MiB read before every timed call (0: warm caches)."),
    stream_mb: int = typer.Option(512, help="MiB summed to measure the read bandwidth."),
    seed: int = typer.Option(0),
    output: Path = typer.Option(None, "--output", "-o", help="Output folder (default "
                                                             "out/bench/attention)."),
    out_old: Path = _OUT_OLD,
):
    """Time one decode step of attention: dense SDPA, dense matmul, Quest; and the limits."""
    from longforge.bench import attention as bench
    from longforge.bench.report import attention_markdown, write_attention

    device = _require_device(device)
    out = _output("attention", output, out_old)
    s = bench.Settings(device=device, shapes=_strs(shapes), contexts=_ints(contexts),
                       budgets=_ints(budgets), kernels=_strs(kernels), repeats=repeats,
                       warmup=warmup, page_size=page_size, flush_mb=flush_mb, stream_mb=stream_mb,
                       seed=seed, out=str(out))

    def check():
        for sh in s.shapes:
            bench.parse_shape(sh)

    _run("attention", bench, s, write_attention, attention_markdown, out, "results.json, "
         "results.md, results.png", "or leave 'c' out of --kernels", check)


@app.command()
@command
def profile(
    shape: str = typer.Option("32/8x128", help="Head shape: HQxD (MHA) or HQ/HKVxD."),
    contexts: list[str] = typer.Option(["32768,131072"], help="Context lengths (tokens)."),
    budget: int = typer.Option(2048, help="Quest token budget."),
    kernels: list[str] = typer.Option(["torch,c"], help="Quest CPU kernels: torch, c."),
    repeats: int = typer.Option(40, help="Timed steps per kernel (median per stage)."),
    warmup: int = typer.Option(3, help="Untimed steps first."),
    page_size: int = typer.Option(16, help="Quest page size (tokens)."),
    flush_mb: int = typer.Option(128, help="MiB read before every step (0: warm caches)."),
    stream_mb: int = typer.Option(512, help="MiB summed to measure the read bandwidth."),
    seed: int = typer.Option(0),
    output: Path = typer.Option(None, "--output", "-o", help="Output folder (profile.json, "
                                                             "profile.md; default "
                                                             "out/bench/profile)."),
    out_old: Path = _OUT_OLD,
):
    """Where the microseconds of one Quest CPU decode step go, stage by stage, per kernel."""
    from longforge.bench import profile as bench
    from longforge.bench.report import profile_markdown, write_profile

    out = _output("profile", output, out_old)
    s = bench.Settings(shape=shape, contexts=_ints(contexts), budget=budget,
                       kernels=_strs(kernels), repeats=repeats, warmup=warmup,
                       page_size=page_size, flush_mb=flush_mb, stream_mb=stream_mb, seed=seed,
                       out=str(out))

    def check():
        bench.parse_shape(shape)
        if not set(s.kernels) <= set(bench.STAGES):
            raise ValueError(f"--kernels: choose from {sorted(bench.STAGES)}")

    _run("profile", bench, s, write_profile, profile_markdown, out, "profile.json, profile.md",
         "or leave 'c' out of --kernels", check)


@app.command()
@command
def decode(
    contexts: list[str] = typer.Option(["32768,131072"], help="Context lengths of the Llama "
                                                              "model ('' to skip)."),
    llama: str = typer.Option("tinyllama", help="Llama shapes: tinyllama (TinyLlama-1.1B) or "
                                                "tiny (a 4-layer test model)."),
    model: str = typer.Option("gemma-3-270m", help="Model for the real-prefill part ('none' "
                                                   "to skip; tiny-gemma3 for tests)."),
    model_contexts: list[str] = typer.Option(["8192,16384"], help="Prompt lengths for the "
                                                                  "real-prefill part."),
    steps: int = typer.Option(24, help="Timed decode steps per policy (median)."),
    warmup: int = typer.Option(2, help="Untimed decode steps per policy first."),
    budget: int = typer.Option(2048, help="Quest token budget."),
    dense_layers: str = typer.Option("auto", help="Layers that decode densely: auto, N (by "
                                                  "index) or full:N (see longforge eval)."),
    page_size: int = typer.Option(16),
    kernel: str = typer.Option("auto", help="Quest kernel: auto (c on a CPU, triton on CUDA), "
                                            "c or torch (CPU), triton (CUDA)."),
    stream_mb: int = typer.Option(512, help="MiB summed to measure the read bandwidth."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda."),
    dtype: str = typer.Option("auto", help="Weights and KV cache: auto (fp32 on a CPU, bf16 "
                                           "on CUDA), fp32, bf16 or fp16."),
    output: Path = typer.Option(None, "--output", "-o", help="Output folder (default "
                                                             "out/bench/decode)."),
    out_old: Path = _OUT_OLD,
    gemma_old: str = typer.Option(None, "--gemma", hidden=True),
    gemma_contexts_old: list[str] = typer.Option(None, "--gemma-contexts", hidden=True),
):
    """End-to-end decode tokens/s, dense vs Quest, through the model forward."""
    from longforge.bench import decode as bench
    from longforge.bench.report import decode_markdown, write_decode
    from longforge.sparse.policies import normalize_dense_layers

    try:
        dense_layers = normalize_dense_layers(dense_layers)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--dense-layers") from None

    out = _output("decode", output, out_old)
    model = deprecated(model, gemma_old, "--gemma", "--model", default="gemma-3-270m")
    model_contexts = deprecated(model_contexts, gemma_contexts_old, "--gemma-contexts",
                                "--model-contexts", default=["8192,16384"])
    s = bench.Settings(contexts=_ints(contexts), llama=llama, model=model,
                       model_contexts=_ints(model_contexts), steps=steps, warmup=warmup,
                       budget=budget, dense_layers=dense_layers, page_size=page_size,
                       kernel=kernel, stream_mb=stream_mb, seed=seed,
                       device=_require_device(device), dtype=dtype, out=str(out))
    _run("decode", bench, s, write_decode, decode_markdown, out, "results.json, results.md",
         "or pass --kernel torch", lambda: bench.checked(s))
