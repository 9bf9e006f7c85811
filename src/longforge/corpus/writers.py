"""Sharded, atomic writers: a file appears under its final name only when complete."""
from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from longforge.corpus.document import Document


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def document_schema():
    """Parquet schema of :class:`Document` records: ``meta`` is JSON text, so documents whose
    metadata differ share one schema (the readers turn it back into a dict)."""
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()),
                      ("meta", pa.string())])


class ShardWriter:
    """Write records to ``<dir>/<prefix>-<shard:05d>.<ext>`` atomically.

    ``fmt`` is ``jsonl``, ``jsonl.gz`` or ``parquet``. Records are dicts (or Documents). Use as
    a context manager: on a clean exit the file is renamed into place, on an exception it is
    removed. gzip output is written with mtime 0 so equal inputs give equal bytes.

    Parquet without a ``schema``: the columns are those of the first batch of records (every
    field any of them has, in order of appearance); a later record with a field they lacked is
    an error (give a schema), a missing field is null. Documents get :func:`document_schema`.
    """

    def __init__(self, out_dir: str | Path, prefix: str = "part", shard: int = 0,
                 fmt: str = "jsonl.gz", schema=None):
        if fmt not in ("jsonl", "jsonl.gz", "parquet"):
            raise ValueError(f"unknown output format {fmt!r} (jsonl, jsonl.gz, parquet)")
        self.path = Path(out_dir) / f"{prefix}-{shard:05d}.{fmt}"
        self.fmt, self.schema = fmt, schema
        self.count = 0
        self._rows: list[dict] = []
        self._fh = None
        self._pq = None

    def __enter__(self) -> "ShardWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _tmp(self.path)
        if self.fmt == "jsonl":
            self._fh = open(self._tmp, "wb")
        elif self.fmt == "jsonl.gz":
            self._raw = open(self._tmp, "wb")
            self._fh = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0, filename="")
        return self

    def write(self, record: dict | Document) -> None:
        if isinstance(record, Document):
            if self.fmt == "parquet":
                self.schema = self.schema or document_schema()
                record = {"id": record.id, "text": record.text, "source": record.source,
                          "meta": json.dumps(record.meta, ensure_ascii=False, sort_keys=True)
                          if record.meta else None}
            else:
                record = record.to_record()
        self.count += 1
        if self.fmt == "parquet":
            self._rows.append(record)
            if len(self._rows) >= 1024:
                self._flush_parquet()
        else:
            self._fh.write(json.dumps(record, ensure_ascii=False, sort_keys=True).encode() + b"\n")

    def _flush_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = self.schema or (self._pq.schema if self._pq is not None else None)
        if schema is None:  # the first batch: every field any record has
            names = list(dict.fromkeys(k for r in self._rows for k in r))
            table = pa.Table.from_pydict({k: [r.get(k) for r in self._rows] for k in names})
        else:
            known = set(schema.names)
            for n, r in enumerate(self._rows, start=self.count - len(self._rows) + 1):
                if not known.issuperset(r):
                    raise ValueError(f"{self.path}: record {n} has fields "
                                     f"{sorted(set(r) - known)} that the earlier records lacked; "
                                     "give the writer a schema")
            table = pa.Table.from_pylist(self._rows, schema=schema)
        if self._pq is None:
            self._pq = pq.ParquetWriter(self._tmp, table.schema)
        self._pq.write_table(table)
        self._rows = []

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._finish(exc_type is None)
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)

    def _finish(self, ok: bool) -> None:
        """Write what is buffered (``ok``) and close the file."""
        if self.fmt != "parquet":
            self._fh.close()
            if self.fmt == "jsonl.gz":
                self._raw.close()
            return
        try:
            if ok and (self._rows or self._pq is None):
                if self._rows or self.schema is not None:
                    self._flush_parquet()
                else:  # empty shard without a schema: write an empty table
                    import pyarrow as pa
                    import pyarrow.parquet as pq
                    pq.write_table(pa.table({}), self._tmp)
        finally:
            if self._pq is not None:
                self._pq.close()


def write_documents(docs: Iterable[Document | dict], out_dir: str | Path, *, prefix: str = "part",
                    shard: int = 0, fmt: str = "jsonl.gz") -> Path:
    with ShardWriter(out_dir, prefix=prefix, shard=shard, fmt=fmt) as w:
        for d in docs:
            w.write(d)
    return w.path


def output_format_of(path: str | Path) -> str:
    """The writer format matching an input file's format (for filters that keep the format)."""
    name = str(path).lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".gz"):
        return "jsonl.gz"
    return "jsonl"
