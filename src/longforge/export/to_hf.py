"""A Hugging Face ``datasets`` folder (``Dataset.save_to_disk``; read with ``load_from_disk``):
one row per packed sequence with ``input_ids``, ``labels`` (the ids, ``-100`` on padding),
``spans`` (``[start, end)`` of every piece) and, under ``--boundaries documents``,
``position_ids`` restarting at 0 at every piece and at the padding.

transformers (5.x) reads ``position_ids`` that restart, given without an ``attention_mask``, as
packed documents and attends within each one only; without the column (``--boundaries
sequence``) the model attends across the whole pack. The HF Trainer drops ``spans`` (not a
model argument) and keeps the other columns, so ``default_data_collator`` feeds them as they
are.

Rows go through datasets' ``ArrowWriter`` one batch at a time into a scratch Arrow file, which
``save_to_disk`` then shards into the output folder (memory-mapped, never loaded whole).
"""
from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa

from longforge.export.source import Packed, SynthRun, need
from longforge.progress import is_quiet


def check() -> None:
    need("datasets", "datasets", "hf")


def features(boundaries: str):
    ds = need("datasets", "datasets", "hf")
    ints = ds.List(ds.Value("int32"))
    cols = {"input_ids": ints, "labels": ints, "spans": ds.List(ds.List(ds.Value("int32"), length=2))}
    if boundaries == "documents":
        cols["position_ids"] = ints
    return ds.Features(cols)


def _positions(s: Packed) -> np.ndarray:
    seg = s.spans if not s.n_pad else np.vstack([s.spans, [[s.content, len(s.input_ids)]]])
    starts = np.repeat(seg[:, 0], seg[:, 1] - seg[:, 0])
    return np.arange(len(s.input_ids), dtype=np.int64) - starts


def _lists(rows: list[np.ndarray]) -> pa.Array:
    offsets = np.cumsum([0] + [len(r) for r in rows]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(rows), pa.int32()))


def _table(batch: list[Packed], boundaries: str) -> pa.Table:
    labels = []
    for s in batch:
        lab = s.input_ids.copy()
        lab[s.content:] = -100
        labels.append(lab)
    spans = [s.spans.astype(np.int32) for s in batch]
    offsets = np.cumsum([0] + [len(x) for x in spans]).astype(np.int32)
    pairs = pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(spans).ravel()), 2)
    cols = {"input_ids": _lists([s.input_ids for s in batch]), "labels": _lists(labels),
            "spans": pa.ListArray.from_arrays(pa.array(offsets), pairs)}
    if boundaries == "documents":
        cols["position_ids"] = _lists([_positions(s) for s in batch])
    return pa.table(cols)


def write(run: SynthRun, batches: Iterable[list[Packed]], out: Path, boundaries: str) -> dict:
    datasets = need("datasets", "datasets", "hf")
    from datasets.arrow_writer import ArrowWriter
    from datasets.table import MemoryMappedTable

    if is_quiet():
        datasets.disable_progress_bars()
    feats = features(boundaries)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.scratch") as scratch:
        arrow = Path(scratch) / "rows.arrow"
        with ArrowWriter(features=feats, path=str(arrow)) as writer:
            for batch in batches:
                writer.write_table(_table(batch, boundaries))
            writer.finalize()
        # The fingerprint datasets would make names the scratch file: name the inputs instead,
        # so that the same run gives the same bytes.
        fingerprint = hashlib.sha256(f"{run.manifest_sha256} {boundaries}".encode()).hexdigest()[:16]
        ds = datasets.Dataset(MemoryMappedTable.from_file(str(arrow)),
                              info=datasets.DatasetInfo(features=feats), fingerprint=fingerprint)
        ds.save_to_disk(str(out))
        del ds
    cols = ", ".join(feats)
    return {
        "token_dtype": "int32",
        "layout": f"columns {cols}; labels -100 on padding"
                  + ("; position_ids restart at every piece and at the padding"
                     if boundaries == "documents" else "; no position_ids: attention across the pack"),
        "read_with": "datasets.load_from_disk('{out}')",
        "trainer": {"hf": "Trainer(train_dataset=load_from_disk('{out}'), "
                          "data_collator=default_data_collator)"},
    }
