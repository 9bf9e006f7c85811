"""Input files: what a corpus argument expands to, each file's format, and the part of a file
one shard reads (:class:`Part`, planned by :mod:`longforge.corpus.shards`)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")


class CorpusError(ValueError):
    """Input that cannot be read at all (missing file, unknown format)."""


def kind_of(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    return None


def iter_input_files(inputs: str | Path | Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """Expand inputs into sorted ``(file, root)`` pairs; ``root`` is the folder given."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise CorpusError(f"{p}: no such file or folder")
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            if not found:
                raise CorpusError(f"{p}: folder holds no files")
            files.extend((f, p) for f in found)
        elif kind_of(p) is None:
            raise CorpusError(f"{p}: unknown corpus format (expected one of "
                              f"{JSONL_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES}, or a "
                              "folder, whose other files are read as text)")
        else:
            files.append((p, p.parent))
    return files


@dataclass(frozen=True)
class Part:
    """What one shard reads of one file. JSONL: the lines that start in bytes
    ``[start, end)`` (``end`` None: to the end of the file), the first of them numbered
    ``first``. Parquet: row groups ``[start, end)`` (``end`` None: to the last), the first row
    numbered ``first``. Other files: the whole file."""

    path: str
    root: str
    start: int = 0
    end: int | None = None
    first: int = 1
