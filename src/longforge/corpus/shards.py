"""Split the input once: K shards that together read every input record exactly once.

The input files (in the readers' order) are laid end to end by size and cut into K equal byte
spans. What falls in a span is that shard's work:

* a plain JSONL file is split by byte range: a cut moves forward to the next line start, so
  each line belongs to the span in which it starts. The line number at each cut is counted once
  here (a scan for newlines, up to the file's last cut only), so that every shard reports true
  ``file:line`` locations;
* a Parquet file is split by row group (a row group goes to the shard holding its middle);
* a gzipped file cannot be split by byte range (a gzip stream has no entry points): it goes
  whole to the shard holding its middle, as does a text file of a folder. A large ``.gz``
  file is therefore one shard's work (:func:`plan_shards` says so: decompress it, or split it
  into several files, to spread it).

Concatenating the shards' records in shard order gives the input order. Duplicate ids inside a
shard are caught by its reader; between shards they are resolved by the step that merges the
shards (the first occurrence in input order wins, as with one shard), which lists the skips of
all shards in input order with :func:`input_order`. Each shard keeps what it read in its
result (:meth:`ShardPlan.record`), so that a resume whose input changed is refused
(:meth:`ShardPlan.stale`) rather than mixing two splits of it.
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

from longforge.corpus.files import Part, iter_input_files, kind_of
from longforge.runs import SettingsMismatch

_BLOCK = 64 << 20  # bytes counted per slice of the newline scan


@dataclass
class ShardPlan:
    num_shards: int
    parts: list[list[Part]]          # per shard, in input order
    files: list[str]                 # every input file, in input order
    notes: list[str]                 # what could not be split, and why

    def __getitem__(self, shard: int) -> list[Part]:
        return self.parts[shard]

    def record(self, shard: int) -> list[list]:
        """What ``shard`` reads, as JSON (kept in its completion marker)."""
        return [[p.path, p.start, p.end, p.first] for p in self.parts[shard]]

    def stale(self, results: dict[int, dict]) -> list[int]:
        """Shards whose result (``{shard: result}``, from completion markers) says they read
        other parts than this plan gives them: the input changed since, or an older version
        split it otherwise (one shard reads everything either way)."""
        return sorted(s for s, r in results.items()
                      if r.get("parts") != self.record(s)
                      and not ("parts" not in r and self.num_shards == 1))

    def check_resume(self, results: dict[int, dict], output) -> None:
        """Refuse to resume ``output`` when one of its finished shards (``results``, from
        completion markers) read other parts of the input than this plan gives it."""
        stale = self.stale(results)
        if stale:
            raise SettingsMismatch(
                f"{output}: finished shards {stale} were made from other parts of the input than "
                "it splits into now (its files changed, or an older longforge split it otherwise): "
                "choose another --output")


def _splittable(path: Path) -> bool:
    return kind_of(path) == "jsonl" and not path.name.lower().endswith(".gz")


def _row_groups(path: Path) -> list[tuple[int, int]] | None:
    """``(rows, bytes)`` of each row group, or None when the metadata cannot be read (the
    reader then reports the file as unreadable)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        md = pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowException):
        return None
    out = []
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        size = sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))
        out.append((rg.num_rows, max(1, size)))
    return out


def _line_starts(path: Path, cuts: list[int]) -> list[tuple[int, int]]:
    """For each cut (sorted byte offsets inside the file): ``(offset of the first line that
    starts at or after it, that line's number)``."""
    out = []
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        size, lines, counted = len(mm), 0, 0
        for c in cuts:
            nl = mm.find(b"\n", max(c, counted) - 1) if c > 0 else -1
            start = 0 if c == 0 else (size if nl < 0 else nl + 1)
            start = max(start, counted)
            for a in range(counted, start, _BLOCK):
                lines += mm[a:min(a + _BLOCK, start)].count(b"\n")
            counted = start
            out.append((start, lines + 1))
    return out


def plan_shards(inputs, num_shards: int) -> ShardPlan:
    """The parts each of ``num_shards`` shards reads (see the module docstring)."""
    files = iter_input_files(inputs)
    units = []  # (global start, global end, path, root, payload)
    pos = 0
    notes = []
    for path, root in files:
        size = max(1, path.stat().st_size)
        groups = _row_groups(path) if kind_of(path) == "parquet" else None
        if groups:
            row = 1
            for g, (rows, nbytes) in enumerate(groups):
                units.append((pos, pos + nbytes, path, root, ("rg", g, row)))
                pos, row = pos + nbytes, row + rows
            continue
        kind = "split" if _splittable(path) else "whole"
        units.append((pos, pos + size, path, root, (kind,)))
        pos += size
    total = max(pos, 1)
    bound = [s * total // num_shards for s in range(num_shards + 1)]
    parts: list[list[Part]] = [[] for _ in range(num_shards)]

    def shard_of(offset2: int) -> int:  # shard holding the global offset offset2 / 2
        return min(num_shards - 1, offset2 * num_shards // (2 * total))

    for g0, g1, path, root, payload in units:
        p, r = str(path), str(root)
        if payload[0] == "rg":
            s, (_, g, row) = shard_of(g0 + g1), payload
            last = parts[s][-1] if parts[s] else None
            if last is not None and last.path == p and last.end == g:  # extend the run
                parts[s][-1] = Part(p, r, last.start, g + 1, last.first)
            else:
                parts[s].append(Part(p, r, g, g + 1, row))
            continue
        if payload[0] == "whole" or num_shards == 1:
            s = 0 if num_shards == 1 else shard_of(g0 + g1)
            parts[s].append(Part(p, r))
            if (payload[0] == "whole" and num_shards > 1 and kind_of(path) == "jsonl"
                    and g1 - g0 > total // num_shards):
                notes.append(f"{path}: a gzipped file cannot be split by byte range, so it is "
                             f"one shard's work ({(g1 - g0) / total:.0%} of the input); "
                             "decompress it or split it into files to spread it over shards")
            continue
        shards = [s for s in range(num_shards) if bound[s] < g1 and bound[s + 1] > g0]
        cuts = [max(0, bound[s] - g0) for s in shards]
        inner = [c for c in cuts if c > 0]
        starts = dict(zip(inner, _line_starts(path, inner))) if inner else {}
        begin = [starts.get(c, (0, 1)) for c in cuts]
        for k, s in enumerate(shards):
            start, first = begin[k]
            end = begin[k + 1][0] if k + 1 < len(shards) else None
            if end is not None and end <= start:
                continue  # no line starts in this span
            if end is None and start >= g1 - g0 and start > 0:
                continue
            parts[s].append(Part(p, r, start, end, first))
    return ShardPlan(num_shards, parts, [str(p) for p, _ in files], notes)


def input_order(files: list[str]):
    """A sort key for ``file:line`` locations: the input's order (files as read, then lines),
    to list skips of several shards as one reader would have."""
    index = {f: i for i, f in enumerate(files)}

    def key(location: str) -> tuple[int, int]:
        path, _, line = location.rpartition(":")
        return index.get(path, len(index)), int(line) if line.isdigit() else 0
    return key
