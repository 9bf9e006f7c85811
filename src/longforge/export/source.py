"""Read a finished ``longforge synth`` output folder sequence by sequence, with the exact token
offsets of every piece.

A synth run writes ``sequences-00000.<fmt>`` (one record per sequence: ``pieces`` = document,
start and end in that document's tokens, and ``n_pad``) and, with ``--tokenized``,
``tokens-00000.parquet`` (``input_ids`` of exactly ``context_length`` tokens). The packer lays a
sequence out as: each piece's tokens, followed by the EOS separator when the piece ends its
document, then ``n_pad`` pad tokens. Only the last piece of a sequence can lack its separator
(a document cut to fill the sequence), so the record alone fixes every offset; :class:`Packed`
carries them as ``spans`` (start, end) in the sequence, the separator counted in its piece.

Memory holds one batch of sequences at a time: the tokens Parquet file is read batch by batch
(:meth:`SynthRun.batches`) beside the sequences file, line by line (JSONL) or batch by batch
(Parquet).
"""
from __future__ import annotations

import gzip
import hashlib
import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from longforge.corpus import CorpusError
from longforge.runs import MANIFEST, RunFolder

BATCH = 256


class RunError(CorpusError):
    """A folder that is not a finished synth run, or one whose files disagree."""


def need(module: str, package: str, fmt: str):
    """``module``, or an error saying in one line how to install what ``--to fmt`` needs."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise RunError(f"--to {fmt} needs {package}: pip install 'longforge[export]' (or "
                       f"pip install {package})") from None


@dataclass
class Packed:
    """One packed sequence: ``input_ids`` (int32, ``context_length`` of them), ``spans`` (one
    ``[start, end)`` row per piece, its EOS separator included; the rows tile
    ``[0, length - n_pad)``) and ``n_pad`` trailing pad tokens."""
    input_ids: np.ndarray
    spans: np.ndarray
    n_pad: int

    @property
    def content(self) -> int:
        """Tokens before the padding."""
        return len(self.input_ids) - self.n_pad

    def segments(self, boundaries: str) -> np.ndarray:
        """What a trainer should treat as separate documents: every piece (``documents``) or
        the whole sequence (``sequence``); padding is never part of one."""
        if boundaries == "documents":
            return self.spans
        return np.array([[0, self.content]], dtype=np.int64)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class SynthRun:
    """A finished synth output folder (see the module docstring).

    ``retokenize``: for a run written without ``--tokenized``, rebuild each sequence's token ids
    from the run's own text stores (``work/texts-*.sqlite``) with its tokenizer, the way the
    packer built them; without it such a run is refused.
    """

    def __init__(self, path: str | Path, retokenize: bool = False):
        self.path = Path(path)
        if not self.path.is_dir():
            raise RunError(f"{self.path}: no such folder")
        pinned = RunFolder(self.path, "synth").pinned()
        if pinned is None or pinned.get("command") != "synth":
            raise RunError(f"{self.path} is not a `longforge synth` output folder (no "
                           "settings.json of a synth run)")
        if not (self.path / MANIFEST).exists():
            raise RunError(f"{self.path}: the synth run is not finished (no {MANIFEST}); "
                           "rerun the same `longforge synth` command to finish it")
        self.settings = pinned["settings"]
        self.manifest = json.loads((self.path / MANIFEST).read_text())
        self.manifest_sha256 = _sha256(self.path / MANIFEST)
        m = self.manifest
        missing = [k for k in ("files", "sequences", "context_length", "method") if k not in m]
        if missing:
            raise RunError(f"{self.path / MANIFEST}: no field {', '.join(missing)} (written by "
                           "an older longforge?); rerun synth")
        self.method, self.length = m["method"], int(m["context_length"])
        self.num_sequences = int(m["sequences"])
        self.tokenizer = self.settings.get("tokenizer")
        self.sequences_path = self._file(m["files"]["sequences"])
        self.retokenize = False
        if m["files"].get("tokens"):
            self.tokens_path = self._file(m["files"]["tokens"])
        elif retokenize:
            self.tokens_path, self.retokenize = None, True
            shards = int(self.settings.get("num_shards", 1))
            self.text_stores = [self.path / "work" / f"texts-{s:05d}.sqlite" for s in range(shards)]
            lost = [p for p in self.text_stores if not p.exists()]
            if lost:
                raise RunError(f"{lost[0]}: missing, so the run's text stores cannot be "
                               "retokenized; rerun synth with --tokenized")
        else:
            raise RunError(
                f"{self.path} has no token ids (the synth run was made without --tokenized): "
                "pass --retokenize to tokenize its pieces from the run's text stores with its "
                f"tokenizer {self.tokenizer!r}, or rerun synth with --tokenized")
        self.eos_id: int | None = None
        self.pad_id: int | None = None
        self.eos_inside_documents = 0

    def _file(self, name: str) -> Path:
        p = self.path / name
        if not p.exists():
            raise RunError(f"{p}: missing, though {self.path / MANIFEST} lists it")
        return p

    @property
    def token_source(self) -> str:
        return self.tokens_path.name if self.tokens_path else (
            f"retokenized from work/texts-*.sqlite with {self.tokenizer}")

    # -- reading ------------------------------------------------------------------------------

    def _records(self) -> Iterator[tuple[str, dict]]:
        """(location, record) of every sequence, in order, one at a time."""
        p = self.sequences_path
        if p.name.endswith(".parquet"):
            pf = pq.ParquetFile(p)
            row = 0
            for b in pf.iter_batches(batch_size=BATCH, columns=["pieces", "n_pad", "n_tokens"]):
                for rec in b.to_pylist():
                    row += 1
                    yield f"{p}: row {row}", rec
            return
        opener = gzip.open if p.name.endswith(".gz") else open
        with opener(p, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                try:
                    yield f"{p}:{lineno}", json.loads(line)
                except json.JSONDecodeError as exc:
                    raise RunError(f"{p}:{lineno}: not JSON ({exc})") from None

    def _layout(self, where: str, rec: dict) -> tuple[np.ndarray, np.ndarray, int]:
        """(spans, separator flags, n_pad) of one record, checked against the context length."""
        try:
            pieces, n_pad = rec["pieces"], int(rec["n_pad"])
            lengths = np.array([p["end"] - p["start"] for p in pieces], dtype=np.int64)
        except (KeyError, TypeError) as exc:
            raise RunError(f"{where}: field {exc} missing or malformed (pieces, n_pad)") from None
        if not pieces or (lengths < 0).any() or n_pad < 0:
            raise RunError(f"{where}: field pieces is empty or has a piece that ends before it "
                           "starts, or n_pad is negative")
        seps = np.ones(len(pieces), dtype=np.int64)
        seps[-1] = self.length - n_pad - lengths.sum() - (len(pieces) - 1)
        if seps[-1] not in (0, 1):
            raise RunError(f"{where}: the pieces ({int(lengths.sum())} tokens and their "
                           f"separators) and n_pad {n_pad} do not fill the run's context "
                           f"length {self.length}")
        ends = np.cumsum(lengths + seps)
        spans = np.stack([ends - lengths - seps, ends], axis=1)
        return spans, seps.astype(bool), n_pad

    def _token_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        pf = pq.ParquetFile(self.tokens_path)
        for b in pf.iter_batches(batch_size=batch_size, columns=["input_ids", "n_pad"]):
            col = b.column(0)
            if (np.diff(col.offsets.to_numpy()) != self.length).any():
                raise RunError(f"{self.tokens_path}: a row of input_ids is not "
                               f"{self.length} tokens long")
            ids = col.values.to_numpy().astype(np.int32, copy=False).reshape(-1, self.length)
            yield ids, b.column(1).to_numpy()

    def _retokenized(self, batch_size: int) -> Iterator[tuple[None, None]]:
        from longforge.synth.config import cached_tokenizer
        from longforge.synth.engines import pad_id_of
        from longforge.synth.pipeline import document_tokens

        tok = cached_tokenizer(self.tokenizer)
        self.eos_id, self.pad_id = tok.eos_token_id, pad_id_of(tok)
        self._texts = document_tokens(tok, self.path, len(self.text_stores))
        while True:
            yield None, None

    def _ids_from_texts(self, where: str, rec: dict, seps: np.ndarray, n_pad: int) -> np.ndarray:
        ids: list[int] = []
        for p, sep in zip(rec["pieces"], seps):
            try:
                _, enc = self._texts(p["doc"])
            except KeyError:
                raise RunError(f"{where}: document {p['doc']!r} is not in the run's text "
                               "stores (work/texts-*.sqlite)") from None
            if len(enc["input_ids"]) < p["end"]:
                raise RunError(f"{where}: document {p['doc']!r} has {len(enc['input_ids'])} "
                               f"tokens with {self.tokenizer}, fewer than the run packed "
                               f"({p['end']}): not the tokenizer the run was made with")
            ids.extend(enc["input_ids"][p["start"]:p["end"]])
            if sep:
                ids.append(self.eos_id)
        ids.extend([self.pad_id] * n_pad)
        return np.asarray(ids, dtype=np.int32)

    def _check(self, where: str, ids: np.ndarray, spans: np.ndarray, seps: np.ndarray,
               n_pad: int) -> None:
        """Separators and padding hold one id each across the run; count EOS ids inside
        documents (they would read as document ends to an EOD-based trainer)."""
        sep_at = spans[seps, 1] - 1
        if len(sep_at):
            if self.eos_id is None:
                self.eos_id = int(ids[sep_at[0]])
            bad = sep_at[ids[sep_at] != self.eos_id]
            if len(bad):
                raise RunError(f"{where}: the separator at position {int(bad[0])} is token "
                               f"{int(ids[bad[0]])}, not the run's EOS {self.eos_id}")
        if n_pad:
            pads = ids[len(ids) - n_pad:]
            if self.pad_id is None:
                self.pad_id = int(pads[0])
            if (pads != self.pad_id).any():
                raise RunError(f"{where}: the padding holds other ids than {self.pad_id}")
        if self.eos_id is not None:
            content = ids[:len(ids) - n_pad]
            self.eos_inside_documents += int(np.count_nonzero(content == self.eos_id)) - len(sep_at)

    def batches(self, batch_size: int = BATCH) -> Iterator[list[Packed]]:
        """The run's sequences in order, ``batch_size`` at a time."""
        records = self._records()
        tokens = self._retokenized(batch_size) if self.retokenize else self._token_batches(batch_size)
        seen = 0
        for ids, n_pads in tokens:
            recs = list(islice(records, batch_size if ids is None else len(ids)))
            if ids is not None and len(recs) < len(ids):
                raise RunError(f"{self.sequences_path} has {seen + len(recs)} sequences, "
                               f"{self.tokens_path} more")
            if not recs:
                break
            out = []
            for i, (where, rec) in enumerate(recs):
                spans, seps, n_pad = self._layout(where, rec)
                if ids is None:
                    row = self._ids_from_texts(where, rec, seps, n_pad)
                else:
                    row = ids[i]
                    if int(n_pads[i]) != n_pad:
                        raise RunError(f"{where}: n_pad {n_pad}, but row {seen + i + 1} of "
                                       f"{self.tokens_path} says {int(n_pads[i])}")
                self._check(where, row, spans, seps, n_pad)
                out.append(Packed(row, spans, n_pad))
            seen += len(out)
            yield out
        if next(records, None) is not None:
            raise RunError(f"{self.sequences_path} has more sequences than {self.tokens_path}")
        if seen != self.num_sequences:
            raise RunError(f"{self.path}: {seen} sequences read, the manifest says "
                           f"{self.num_sequences}")
