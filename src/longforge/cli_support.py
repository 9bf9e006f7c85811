"""One convention for every ``longforge`` subcommand.

* Inputs are positional arguments; the output folder is ``--output/-o``, by default under
  ``out/<command>/`` (never into committed results).
* ``--quiet/-q`` works before or after the subcommand (``@command`` adds it to each one).
* List options take comma-separated values and may be repeated (``--lengths 4096,8192`` or
  ``--lengths 4096 --lengths 8192``): :func:`split`.
* ``--device`` is ``auto`` (CUDA when present) everywhere.
* Usage errors (exit 2) are for bad options only. A run that cannot go on (a folder made with
  other settings, a missing model or file) prints ``error: ...`` and exits 1; anything else is
  a bug and shows its traceback.
* An old spelling of an option keeps working for one release with a warning
  (:func:`deprecated`).
"""
from __future__ import annotations

import functools
import inspect
from pathlib import Path

import typer

QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars or status lines.")
DEVICE_HELP = "auto (CUDA when present), cpu, cuda or cuda:N."
DTYPE_HELP = "auto (fp32 on CPU, bf16/fp16 on GPU), fp32, bf16, fp16."

# The execution options of every sharded job (docs/scale.md), one spelling for all.
WORKERS = typer.Option(None, help="Local processes (default 1), or with --executor ray the most "
                                  "shards in flight (default: as many as the cluster takes).")
EXECUTOR = typer.Option("local", help="local (this machine) or ray (a Ray cluster; "
                                      "pip install 'longforge\\[ray]').")
RAY_ADDRESS = typer.Option(None, help="Ray cluster to join: auto, host:port or ray://host:port "
                                      "(default: start a local one for this run).")
CPUS_PER_TASK = typer.Option(1.0, help="CPUs each shard asks of Ray.")
GPUS_PER_TASK = typer.Option(0.0, help="GPUs each shard asks of Ray (fractions allowed).")


def default_workers(workers: int | None, executor: str) -> int:
    """``--workers`` when given, else 1 local process, or no cap (0) on Ray."""
    if workers is not None:
        return workers
    return 0 if executor == "ray" else 1


def default_output(*parts: str) -> Path:
    """``out/<command>/...``: where a command writes when ``--output`` is not given."""
    return Path("out", *parts)


def split(values, kind=str) -> list:
    """Comma-separated and repeated option values as one list of ``kind``."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    out = []
    for v in values:
        for x in str(v).split(","):
            if x.strip():
                try:
                    out.append(kind(x.strip()))
                except ValueError:
                    raise typer.BadParameter(f"{x.strip()!r} is not a valid {kind.__name__}") from None
    return out


def deprecated(new_value, old_value, old: str, new: str, default=None):
    """The value of an option given under its old spelling ``old`` (with a warning), or under
    ``new``; both at once is a usage error."""
    if old_value is None or old_value == [] or old_value == ():
        return new_value
    typer.echo(f"warning: {old} is deprecated and will be removed in the next release; use {new}",
               err=True)
    if new_value not in (None, default, [], ()):
        raise typer.BadParameter(f"give {new} or the deprecated {old}, not both")
    return old_value


def runtime_errors() -> tuple[type[BaseException], ...]:
    """Errors that stop a run for a reason the user can act on (not a bug, not a usage error)."""
    from longforge.corpus.readers import CorpusError
    from longforge.executor import ExecutorError
    from longforge.models.errors import ModelFileError, ModelNotFoundError
    from longforge.runs import SettingsMismatch

    return (SettingsMismatch, ModelNotFoundError, ModelFileError, CorpusError, FileNotFoundError,
            ExecutorError)


def command(fn):
    """Give a subcommand ``--quiet/-q`` and the error convention above."""
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values()]
    params.append(inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=QUIET,
                                    annotation=bool))

    @functools.wraps(fn)
    def wrapper(*args, quiet: bool = False, **kwargs):
        from longforge.progress import set_quiet

        if quiet:
            set_quiet(True)
        try:
            return fn(*args, **kwargs)
        except runtime_errors() as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None

    wrapper.__signature__ = sig.replace(parameters=params)
    wrapper.__annotations__ = {**getattr(fn, "__annotations__", {}), "quiet": "bool"}
    return wrapper
