"""datatrove tokenized files, as nanotron reads them: ``sequences.ds`` (token ids, uint32),
``sequences.ds.index`` (the end of every document, in tokens from the file's start, uint64),
``sequences.ds.loss`` (one byte per token, 0 on padding) and ``sequences.ds.metadata``
(tokenizer, token size, token count), written with datatrove's own ``TokenizedFile``.

``DatatroveFileDataset`` cuts the file into windows of ``seq_len + 1`` tokens, so with
``seq_len = context_length - 1`` each window is one packed sequence; its ``positions`` restart at
every document end listed in the index: the pieces (``--boundaries documents``) or only the
sequence itself (``sequence``). Padding is a document of its own at the end of its sequence.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from longforge.export.source import Packed, SynthRun, need

NAME = "sequences.ds"


def check() -> None:
    need("datatrove.pipeline.tokens.tokenizer", "datatrove", "datatrove")


def write(run: SynthRun, batches: Iterable[list[Packed]], out: Path, boundaries: str) -> dict:
    tokenized = need("datatrove.pipeline.tokens.tokenizer", "datatrove", "datatrove")
    f = tokenized.TokenizedFile(str(out), NAME, save_index=True, save_loss_metadata=True,
                                tokenizer_name_or_path=run.tokenizer, save_final_metadata=True,
                                token_size=4)
    for batch in batches:
        for s in batch:
            ends = s.segments(boundaries)[:, 1].tolist() + ([len(s.input_ids)] if s.n_pad else [])
            f.write_bytes(s.input_ids.astype("<u4").tobytes(), doc_ends=ends)
            loss = np.ones(len(s.input_ids), dtype=bool)
            loss[s.content:] = False
            f.write_loss_bytes(loss.tobytes())
    f.close()
    return {
        "token_dtype": "uint32",
        "layout": f"{NAME}: packed sequences back to back; {NAME}.index: document ends "
                  f"({boundaries}; padding ends its own document); {NAME}.loss: 0 on padding",
        "read_with": f"datatrove.utils.dataset.DatatroveFileDataset('{{out}}/{NAME}', "
                     f"seq_len={run.length - 1}, token_size=4, return_positions=True)",
        "trainer": {"nanotron": f"dataset folder {{out}}, sequence_length {run.length - 1}, "
                                "token_size 4"},
    }
