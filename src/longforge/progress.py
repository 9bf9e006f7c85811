"""Progress bars that ``--quiet`` (or ``LONGFORGE_QUIET=1``) silences."""
from __future__ import annotations

import os

from tqdm.auto import tqdm

_QUIET = os.environ.get("LONGFORGE_QUIET") == "1"


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = quiet
    os.environ["LONGFORGE_QUIET"] = "1" if quiet else "0"  # inherited by worker processes


def is_quiet() -> bool:
    return _QUIET


def progress(iterable=None, *, desc: str | None = None, total: int | None = None,
             unit: str = "it", disable: bool = False, **kwargs):
    """A tqdm bar, or a plain pass-through when quiet (or ``disable``)."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=_QUIET or disable,
                dynamic_ncols=True, **kwargs)


def say(msg: str) -> None:
    """A one-line status message (suppressed when quiet)."""
    if not _QUIET:
        tqdm.write(msg)
