"""Stream documents from JSONL(.gz), Parquet, or folders of text files.

Every input record yields either a :class:`Document` or a :class:`Skip` naming the file, the
line (row) and the field at fault, so that no input is lost without a reason. Only the set of
ids seen is kept in memory (to catch duplicate ids); texts stream.
"""
from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from longforge.corpus.document import Document, Skip

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")


class CorpusError(ValueError):
    """Input that cannot be read at all (missing file, unknown format)."""


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    raise CorpusError(f"{path}: unknown corpus format (expected one of "
                      f"{JSONL_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES}, or a folder)")


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
        else:
            files.append((p, p.parent))
    return files


def _jsonl_records(path: Path, fields: dict[str, str]) -> Iterator[Document | Skip]:
    opener = gzip.open if path.name.endswith(".gz") else open
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
                yield Skip(loc, "invalid_record", f"expected a JSON object, got {type(rec).__name__}")
                continue
            yield _from_record(rec, loc, fields)


def _parquet_records(path: Path, fields: dict[str, str]) -> Iterator[Document | Skip]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    row = 0
    for batch in pf.iter_batches(batch_size=1024):
        for rec in batch.to_pylist():
            row += 1
            yield _from_record(rec, f"{path}:{row}", fields)


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
    meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    extra = {k: v for k, v in rec.items() if k not in (tf, idf, sf, "meta")}
    source = rec.get(sf)
    return Document(id=rid, text=text, source=None if source is None else str(source),
                    meta={**meta, **extra}, location=loc)


def read_corpus(inputs, *, text_field: str = "text", id_field: str = "id",
                source_field: str = "source") -> Iterator[Document | Skip]:
    """Yield a Document or a Skip for every input record, in a stable order.

    Records without an id get ``<file stem>:<line>``. A repeated id is skipped
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
        else:
            records = [_text_record(path, root)]
        for item in records:
            if isinstance(item, Document):
                if item.id is None:
                    item.id = f"{path.name}:{item.location.rsplit(':', 1)[1]}"
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
