"""MosaicML Streaming (MDS) shards, as Princeton's ProLong trainer reads them: columns
``input_ids`` (uint32, the whole sequence, padding included), ``indices`` (uint32 ``[n, 2]``:
the ``[start, end)`` token ranges the trainer treats as separate documents) and ``spans`` (the
pieces, always; the same as ``indices`` under ``--boundaries documents``).

``indices`` never covers the padding, so ProLong's collator, which keeps only the tokens inside
``indices``, neither trains on nor attends to pad tokens. Under ``--boundaries sequence`` it is
one range over the whole sequence (attention across documents); under ``documents`` one range
per piece (ProLong then attends within each document only).

The bytes are those of mosaicml-streaming's ``MDSWriter`` (format version 2, no compression, no
hashes, 64 MiB shards): written here because mosaicml-streaming declares ``transformers<5``
and ``numpy<2.2``, which cannot be installed beside longforge; the tests compare the bytes with
``MDSWriter``'s and read them back with ``StreamingDataset``.

A shard file is: number of samples (uint32), the byte offset of every sample and of the end
(uint32 each, from the start of the file), the shard's configuration as JSON, the samples. A
sample is the byte size of each of its columns (uint32 each, columns in name order), then the
columns; an ``ndarray:uint32`` column is one byte ``ndim << 2 | shape width`` (0: uint8 ... 3:
uint64), the shape, and the values. ``index.json`` lists the shards.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from longforge.export.source import Packed, SynthRun

COLUMNS = {"indices": "ndarray:uint32", "input_ids": "ndarray:uint32", "spans": "ndarray:uint32"}
NAMES = sorted(COLUMNS)
SIZE_LIMIT = 1 << 26
_SHAPE_TYPES = (np.uint8, np.uint16, np.uint32, np.uint64)


def check() -> None:
    """No dependency beyond numpy."""


def _config() -> dict:
    return {"column_encodings": [COLUMNS[n] for n in NAMES], "column_names": NAMES,
            "column_sizes": [None] * len(NAMES), "compression": None, "format": "mds",
            "hashes": [], "size_limit": SIZE_LIMIT, "version": 2}


def _ndarray(a: np.ndarray) -> bytes:
    width = next(i for i, t in enumerate(_SHAPE_TYPES) if max(a.shape) <= np.iinfo(t).max)
    return (bytes([(a.ndim << 2) | width]) + np.array(a.shape, _SHAPE_TYPES[width]).tobytes()
            + a.astype("<u4").tobytes())


def encode(columns: dict[str, np.ndarray]) -> bytes:
    """One sample: the column sizes, then the columns."""
    data = [_ndarray(columns[n]) for n in NAMES]
    return np.array([len(d) for d in data], "<u4").tobytes() + b"".join(data)


class ShardWriter:
    """Samples into ``shard.NNNNN.mds`` files of at most :data:`SIZE_LIMIT` bytes (one shard in
    memory at a time), then ``index.json``."""

    def __init__(self, out: Path):
        self.out, self.shards = out, []
        self.config = json.dumps(_config(), sort_keys=True).encode()
        self._reset()

    def _reset(self) -> None:
        self.samples: list[bytes] = []
        self.size = 4 + 4 + len(self.config)

    def add(self, sample: bytes) -> None:
        if SIZE_LIMIT < self.size + len(sample) + 4:
            self._flush()
        self.samples.append(sample)
        self.size += len(sample) + 4

    def _flush(self) -> None:
        n = len(self.samples)
        offsets = np.cumsum([0] + [len(s) for s in self.samples]) + 4 + 4 * (n + 1) + len(self.config)
        data = (np.uint32(n).tobytes() + offsets.astype("<u4").tobytes() + self.config
                + b"".join(self.samples))
        name = f"shard.{len(self.shards):05d}.mds"
        (self.out / name).write_bytes(data)
        self.shards.append({"samples": n, "raw_data": {"basename": name, "bytes": len(data),
                                                       "hashes": {}},
                            "zip_data": None, **_config()})
        self._reset()

    def finish(self) -> None:
        if self.samples:
            self._flush()
        (self.out / "index.json").write_text(json.dumps({"shards": self.shards, "version": 2},
                                                        sort_keys=True))


def write(run: SynthRun, batches: Iterable[list[Packed]], out: Path, boundaries: str) -> dict:
    shards = ShardWriter(out)
    for batch in batches:
        for s in batch:
            shards.add(encode({"input_ids": s.input_ids, "indices": s.segments(boundaries),
                               "spans": s.spans}))
    shards.finish()
    return {
        "token_dtype": "uint32",
        "layout": f"MDS columns {', '.join(f'{n} ({COLUMNS[n]})' for n in NAMES)}; indices: "
                  f"{boundaries} ranges, padding excluded; spans: the pieces",
        "read_with": "streaming.StreamingDataset(local='{out}')",
        "trainer": {"prolong": "--tokenized_mds_train {out}"},
    }
