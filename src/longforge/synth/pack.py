"""Pack ordered groups of documents into sequences of exactly ``L`` tokens (the same packer for
every method, so only the grouping differs).

Every document costs its token count plus one separator (the tokenizer's EOS, appended after
the document's last token). Groups are consumed in order; a sequence may continue into the next
group (``group_boundary="mix"``, as concatenate-and-chunk pretraining does) or be closed and
padded at a group's end (``"pad"``, so that a sequence never mixes groups).

What happens when a document does not fit in the space left (``boundary``):

* ``truncate``: the document is cut to fill the sequence; the rest of it is discarded (counted).
* ``carry``: the document is cut to fill the sequence; the rest starts the next sequence.
* ``pad``: the sequence is closed and padded; the whole document starts the next sequence. A
  document longer than ``L`` on its own is cut into ``L``-token pieces (carried).

A document already in the open sequence (oversampling can bring it back) is deferred to the
next sequence, so no document appears twice inside one sequence. The last, partial sequence is
padded under ``pad`` policies and dropped otherwise: its tokens (and those of documents still
deferred) are counted in ``tail_tokens_dropped``, and its documents, when no other sequence holds
them, are dropped with reason ``last_partial_sequence``.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

BOUNDARIES = ("truncate", "carry", "pad")
GROUP_BOUNDARIES = ("mix", "pad")


@dataclass
class Piece:
    doc: str
    start: int       # first token of the document in this piece
    end: int         # one past the last token (excluding the separator)
    sep: bool        # the separator follows (the document ends here)
    group: int

    @property
    def length(self) -> int:
        return self.end - self.start + int(self.sep)


@dataclass
class Seq:
    """An open or finished sequence. ``used`` (tokens so far, separators included) and ``docs``
    are kept up to date by :meth:`add`, so adding a piece costs O(1) however many documents the
    sequence already holds."""
    pieces: list[Piece] = field(default_factory=list)
    n_pad: int = 0
    used: int = 0
    docs: set[str] = field(default_factory=set)

    def add(self, piece: Piece) -> None:
        self.pieces.append(piece)
        self.used += piece.length
        self.docs.add(piece.doc)

    def has(self, doc: str) -> bool:
        return doc in self.docs


@dataclass
class PackStats:
    sequences: int = 0
    pad_tokens: int = 0
    truncated_tokens: int = 0
    tail_tokens_dropped: int = 0     # last partial sequence (and documents deferred to it), not written
    dropped_tail_docs: list[str] = field(default_factory=list)


class Packer:
    def __init__(self, length: int, n_tokens: dict[str, int], boundary: str = "carry",
                 group_boundary: str = "mix"):
        if boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, not {boundary!r}")
        if group_boundary not in GROUP_BOUNDARIES:
            raise ValueError(f"group_boundary must be one of {GROUP_BOUNDARIES}")
        if length < 2:
            raise ValueError("context length must be at least 2 tokens")
        self.L, self.n_tokens = length, n_tokens
        self.boundary, self.group_boundary = boundary, group_boundary
        self.stats = PackStats()
        self.cur = Seq()
        self.deferred: list[tuple[str, int]] = []

    def _emit(self, pad: bool) -> Iterator[Seq]:
        seq, self.cur = self.cur, Seq()
        if pad:
            seq.n_pad = self.L - seq.used
            self.stats.pad_tokens += seq.n_pad
        self.stats.sequences += 1
        yield seq

    def _drain(self) -> Iterator[Seq]:
        """Retry deferred documents (those still in the open sequence are deferred again)."""
        pending, self.deferred = self.deferred, []
        for doc, g in pending:
            yield from self._add(doc, g)

    def _add(self, doc: str, group: int) -> Iterator[Seq]:
        if self.cur.has(doc):
            self.deferred.append((doc, group))
            return
        n, start = self.n_tokens[doc], 0
        while True:
            space = self.L - self.cur.used
            rest = n - start + 1  # tokens left plus the separator
            if rest <= space:
                self.cur.add(Piece(doc, start, n, True, group))
                if rest == space:
                    yield from self._emit(pad=False)
                return
            if self.boundary == "pad" and self.cur.pieces:
                yield from self._emit(pad=True)
                continue
            self.cur.add(Piece(doc, start, start + space, False, group))
            start += space
            yield from self._emit(pad=False)
            if self.boundary == "truncate":
                self.stats.truncated_tokens += n - start
                return

    def pack(self, groups: Iterable[list[str]]) -> Iterator[Seq]:
        for g, docs in enumerate(groups):
            for doc in docs:
                yield from self._drain()
                yield from self._add(doc, g)
            if self.group_boundary == "pad" and self.cur.pieces:
                yield from self._emit(pad=True)
        yield from self._drain()
        while self.cur.pieces:
            if "pad" in (self.boundary, self.group_boundary):
                yield from self._emit(pad=True)
                yield from self._drain()
            else:
                tail = {p.doc for p in self.cur.pieces} | {d for d, _ in self.deferred}
                self.stats.dropped_tail_docs = sorted(tail)
                self.stats.tail_tokens_dropped = self.cur.used + sum(
                    self.n_tokens[d] + 1 for d, _ in self.deferred)
                self.cur, self.deferred = Seq(), []
