"""Stream documents from JSONL(.gz), Parquet, or folders of text files.

Every input record yields either a :class:`Document` or a :class:`Skip` naming the file, the
line (row) and the field at fault, so that no input is lost without a reason. A file that
cannot be read on (a truncated gzip stream, a corrupt Parquet file) yields one ``unreadable``
Skip at the line where reading stopped, and the run goes on with the next file. Inside a
folder, files that are neither JSONL nor Parquet are read as text documents (source code,
manual pages, ...; a binary file is an ``undecodable`` Skip). Only the set of ids seen is kept
in memory (to catch duplicate ids); texts stream.
"""
from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from longforge.corpus.document import Document, Skip

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")


class CorpusError(ValueError):
    """Input that cannot be read at all (missing file, unknown format)."""


def _kind(path: Path) -> str | None:
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
        elif _kind(p) is None:
            raise CorpusError(f"{p}: unknown corpus format (expected one of "
                              f"{JSONL_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES}, or a "
                              "folder, whose other files are read as text)")
        else:
            files.append((p, p.parent))
    return files


def _unreadable(path: Path, line: int, exc: BaseException) -> Skip:
    return Skip(f"{path}:{line}", "unreadable",
                f"the file cannot be read from this record on ({type(exc).__name__}: {exc}); "
                "records after it, if any, are lost")


def _jsonl_records(path: Path, fields: dict[str, str]) -> Iterator[Document | Skip]:
    opener = gzip.open if path.name.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                loc = f"{path}:{lineno}"
                if not raw.strip():
                    continue  # blank lines are not records
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield Skip(loc, "undecodable", f"not valid UTF-8 at byte {exc.start}")
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield Skip(loc, "invalid_json", f"{exc.msg} (column {exc.colno})")
                    continue
                if not isinstance(rec, dict):
                    yield Skip(loc, "invalid_record",
                               f"expected a JSON object, got {type(rec).__name__}")
                    continue
                yield _from_record(rec, loc, fields)
    except (OSError, EOFError, zlib.error) as exc:  # truncated or corrupt gzip, I/O error
        yield _unreadable(path, lineno + 1, exc)


def _parquet_records(path: Path, fields: dict[str, str]) -> Iterator[Document | Skip]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            try:
                rows = batch.to_pylist()
            except UnicodeDecodeError:  # a string that is not UTF-8: find it row by row
                rows = None
            for i in range(batch.num_rows):
                row += 1
                loc = f"{path}:{row}"
                if rows is not None:
                    yield _from_record(rows[i], loc, fields)
                    continue
                one = batch.slice(i, 1)
                bad = [name for name, col in zip(one.schema.names, one.columns)
                       if not _decodes(col)]
                if bad:
                    yield Skip(loc, "undecodable", "not valid UTF-8", field=bad[0])
                else:
                    yield _from_record(one.to_pylist()[0], loc, fields)
    except (OSError, pa.ArrowException) as exc:
        yield _unreadable(path, row + 1, exc)


def _decodes(column) -> bool:
    try:
        column.to_pylist()
        return True
    except UnicodeDecodeError:
        return False


def _text_record(path: Path, root: Path) -> Document | Skip:
    loc = f"{path}:1"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return Skip(loc, "undecodable", f"not valid UTF-8 at byte {exc.start}")
    rel = path.relative_to(root)
    source = rel.parts[0] if len(rel.parts) > 1 else None
    return _from_record({"id": rel.as_posix(), "text": text, "source": source}, loc,
                        {"id": "id", "text": "text", "source": "source"})


def _from_record(rec: dict, loc: str, fields: dict[str, str]) -> Document | Skip:
    tf, idf, sf = fields["text"], fields["id"], fields["source"]
    rid = rec.get(idf)
    rid = None if rid is None else str(rid)
    if tf not in rec:
        return Skip(loc, "missing_field", f"no '{tf}' field", id=rid, field=tf)
    text = rec[tf]
    if not isinstance(text, str):
        return Skip(loc, "wrong_type", f"'{tf}' is {type(text).__name__}, not a string",
                    id=rid, field=tf)
    if not text.strip():
        return Skip(loc, "empty", "text is empty or whitespace only", id=rid, field=tf)
    meta = rec.get("meta")
    if isinstance(meta, str):  # JSON text, as the Parquet writer stores it
        try:
            parsed = json.loads(meta)
        except json.JSONDecodeError:
            parsed = None
        meta = parsed if isinstance(parsed, dict) else meta
    extra = {k: v for k, v in rec.items() if k not in (tf, idf, sf, "meta")}
    if meta is not None and not isinstance(meta, dict):
        extra["meta"], meta = meta, {}  # kept as a field, not dropped
    source = rec.get(sf)
    return Document(id=rid, text=text, source=None if source is None else str(source),
                    meta={**(meta or {}), **extra}, location=loc)


def read_corpus(inputs, *, text_field: str = "text", id_field: str = "id",
                source_field: str = "source") -> Iterator[Document | Skip]:
    """Yield a Document or a Skip for every input record, in a stable order.

    Records without an id get ``<file>:<line>``, the file's path relative to the folder given
    (so two folders' ``data.jsonl`` do not collide). A repeated id is skipped
    (``duplicate_id``) and the first occurrence is kept.
    """
    fields = {"text": text_field, "id": id_field, "source": source_field}
    seen: set[str] = set()
    for path, root in iter_input_files(inputs):
        kind = _kind(path)
        if kind == "jsonl":
            records: Iterable[Document | Skip] = _jsonl_records(path, fields)
        elif kind == "parquet":
            records = _parquet_records(path, fields)
        else:  # a text file, or any other file inside a folder
            records = [_text_record(path, root)]
        for item in records:
            if isinstance(item, Document):
                if item.id is None:
                    rel = path.relative_to(root).as_posix()
                    item.id = f"{rel}:{item.location.rsplit(':', 1)[1]}"
                if item.id in seen:
                    item = Skip(item.location, "duplicate_id",
                                f"id '{item.id}' was already used by an earlier document",
                                id=item.id, field=id_field)
                else:
                    seen.add(item.id)
            yield item


def read_documents(inputs, manifest=None, *, shard: int = 0, num_shards: int = 1,
                   **fields) -> Iterator[Document]:
    """Stream usable documents; skips go to ``manifest`` (if given).

    With ``num_shards > 1`` only every ``num_shards``-th record (by position) is kept for this
    shard; each record, usable or not, belongs to exactly one shard, so shards together
    account for every input exactly once.
    """
    for n, item in enumerate(read_corpus(inputs, **fields)):
        if n % num_shards != shard:
            continue
        if isinstance(item, Skip):
            if manifest is not None:
                manifest.skip(item)
            continue
        if manifest is not None:
            manifest.read += 1
        yield item


def open_text(path: Path) -> io.TextIOBase:
    """Open a plain or gzipped text file for reading."""
    if str(path).endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")
