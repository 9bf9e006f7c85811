"""Megatron indexed dataset: ``sequences.bin`` (the token ids, int32) and ``sequences.idx``
(sequence lengths, byte offsets and the document index), written with megatron-core's own
``IndexedDatasetBuilder``.

Each packed sequence is one Megatron sequence and one Megatron document, exactly
``context_length`` tokens long. ``GPTDataset`` shuffles and splits by sequence, so packs stay
whole; with ``--seq-length`` equal to the context length every sample is one pack (Megatron
reads one token more per sample, the first token of the next pack, as the last label). The
document boundaries inside a pack are the EOS separators the packer wrote, which is what
Megatron's ``--reset-position-ids``, ``--reset-attention-mask`` and ``--eod-mask-loss`` read
(Megatron calls that token EOD); the padding keeps the run's pad id, whose loss GPTDataset masks
when it is the tokenizer's pad id. int32 because megatron-core has no uint32 and Gemma's and
Qwen's vocabularies exceed uint16.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from longforge.export.source import Packed, SynthRun, need

PREFIX = "sequences"


def check() -> None:
    _builder()


def _builder():
    with warnings.catch_warnings():  # megatron-core warns at import about optional GPU kernels
        warnings.simplefilter("ignore")
        return need("megatron.core.datasets.indexed_dataset", "megatron-core", "megatron").IndexedDatasetBuilder


def write(run: SynthRun, batches: Iterable[list[Packed]], out: Path, boundaries: str) -> dict:
    builder = _builder()(str(out / f"{PREFIX}.bin"), dtype=np.int32)
    for batch in batches:
        for s in batch:
            builder.add_document(s.input_ids, [len(s.input_ids)])
    builder.finalize(str(out / f"{PREFIX}.idx"))
    return {
        "token_dtype": "int32",
        "layout": "one Megatron sequence and document per packed sequence; document ends "
                  "inside it are EOD (the run's EOS) tokens",
        "read_with": f"megatron.core.datasets.indexed_dataset.IndexedDataset('{{out}}/{PREFIX}')",
        "trainer": {"megatron": f"--data-path {{out}}/{PREFIX} --seq-length {run.length} "
                                "(add --reset-position-ids --reset-attention-mask for "
                                "per-document attention, --eod-mask-loss to skip the loss on "
                                "separators)"},
    }
