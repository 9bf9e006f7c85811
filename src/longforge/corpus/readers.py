"""Stream documents from JSONL(.gz), Parquet, or folders of text files.

Every input record yields either a :class:`Document` or a :class:`Skip` naming the file, the
line (row) and the field at fault, so that no input is lost without a reason. A file that
cannot be read on (a truncated gzip stream, a corrupt Parquet file) yields one ``unreadable``
Skip at the line where reading stopped, and the run goes on with the next file. Inside a
folder, files that are neither JSONL nor Parquet are read as text documents (source code,
manual pages, ...; a binary file is an ``undecodable`` Skip). Only the set of ids seen is kept
in memory (to catch duplicate ids); texts stream.

Shards: :func:`read_documents` with ``num_shards > 1`` reads only its shard's parts of the
input (:mod:`longforge.corpus.shards`), so that K shards read the corpus once in total.
"""
from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from longforge.corpus.document import Document, Skip
from longforge.corpus.files import (JSONL_SUFFIXES, PARQUET_SUFFIXES, TEXT_SUFFIXES,  # noqa: F401
                                    CorpusError, Part, iter_input_files, kind_of)

def _unreadable(path: Path, line: int, exc: BaseException) -> Skip:
    return Skip(f"{path}:{line}", "unreadable",
                f"the file cannot be read from this record on ({type(exc).__name__}: {exc}); "
                "records after it, if any, are lost")


def _jsonl_records(path: Path, fields: dict[str, str], start: int = 0, end: int | None = None,
                   first: int = 1) -> Iterator[Document | Skip]:
    """The records of the lines that start in bytes ``[start, end)``, the first numbered
    ``first`` (a byte range of a plain file only; a gzipped file is read whole)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    lineno = first - 1
    try:
        with opener(path, "rb") as fh:
            if start:
                fh.seek(start)
            pos = start
            for lineno, raw in enumerate(fh, start=first):
                if end is not None and pos >= end:
                    break
                pos += len(raw)
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


def _parquet_records(path: Path, fields: dict[str, str], start: int = 0, end: int | None = None,
                     first: int = 1) -> Iterator[Document | Skip]:
    """The rows of row groups ``[start, end)`` (all when ``end`` is None and ``start`` 0), the
    first numbered ``first``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = first - 1
    try:
        pf = pq.ParquetFile(path)
        groups = None if (start, end) == (0, None) else list(range(start, end or pf.num_row_groups))
        for batch in pf.iter_batches(batch_size=1024, row_groups=groups):
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


def duplicate_skip(location: str, doc_id: str, id_field: str = "id") -> Skip:
    """The skip of a document whose id an earlier document of the input already has."""
    return Skip(location, "duplicate_id", f"id '{doc_id}' was already used by an earlier document",
                id=doc_id, field=id_field)


def account_duplicates(manifest, dups, files: list[str], id_field: str = "id") -> None:
    """Account documents a shard read but the merge dropped because an earlier shard has their
    id (``dups``: ``(location, id)`` pairs), as one reader would have: not read twice, a
    ``duplicate_id`` skip at each one's location, and every skip listed in input order."""
    from longforge.corpus.shards import input_order

    for location, doc_id in dups:
        manifest.read -= 1
        manifest.skips.append(duplicate_skip(location or "?", doc_id, id_field))
    order = input_order(files)
    manifest.skips.sort(key=lambda sk: order(sk.location))


def read_corpus(inputs, *, text_field: str = "text", id_field: str = "id",
                source_field: str = "source", parts: list[Part] | None = None
                ) -> Iterator[Document | Skip]:
    """Yield a Document or a Skip for every input record, in a stable order.

    Records without an id get ``<file>:<line>``, the file's path relative to the folder given
    (so two folders' ``data.jsonl`` do not collide). A repeated id is skipped
    (``duplicate_id``) and the first occurrence is kept. ``parts``: read only these parts of the
    input files (one shard's, from :func:`longforge.corpus.shards.plan_shards`).
    """
    fields = {"text": text_field, "id": id_field, "source": source_field}
    if parts is None:
        parts = [Part(str(p), str(r)) for p, r in iter_input_files(inputs)]
    seen: set[str] = set()
    for part in parts:
        path, root = Path(part.path), Path(part.root)
        kind = kind_of(path)
        if kind == "jsonl":
            records: Iterable[Document | Skip] = _jsonl_records(path, fields, part.start,
                                                                part.end, part.first)
        elif kind == "parquet":
            records = _parquet_records(path, fields, part.start, part.end, part.first)
        else:  # a text file, or any other file inside a folder
            records = [_text_record(path, root)]
        for item in records:
            if isinstance(item, Document):
                if item.id is None:
                    rel = path.relative_to(root).as_posix()
                    item.id = f"{rel}:{item.location.rsplit(':', 1)[1]}"
                if item.id in seen:
                    item = duplicate_skip(item.location, item.id, id_field)
                else:
                    seen.add(item.id)
            yield item


def read_documents(inputs, manifest=None, *, shard: int = 0, num_shards: int = 1,
                   plan=None, **fields) -> Iterator[Document]:
    """Stream usable documents; skips go to ``manifest`` (if given).

    With ``num_shards > 1`` only this shard's parts of the input are read (``plan``, from
    :func:`longforge.corpus.shards.plan_shards`; planned here when not given): the shards
    together read every input record exactly once, in input order when taken in shard order.
    A duplicate id is caught inside a shard; one that repeats an id of an earlier shard is for
    the step that merges the shards to drop (:func:`duplicate_skip`).
    """
    parts = None
    if num_shards > 1 or plan is not None:
        if plan is None:
            from longforge.corpus.shards import plan_shards

            plan = plan_shards(inputs, num_shards)
        parts = plan[shard]
    for item in read_corpus(inputs, parts=parts, **fields):
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
