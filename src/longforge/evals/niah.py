"""Needle in a haystack, RULER style: a magic-number needle in real text (not passkey filler).

The haystack is the sample corpus's ``python-docs`` documents (prose: the Python reference
topics) in file order, or any ``--haystack`` (a ``.jsonl[.gz]`` corpus, optionally filtered by
``--source``, a text file or a directory of text files), cut to length in tokens; the needle is
inserted after ``depth`` of it, at the nearest preceding sentence or line end.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

INSTRUCTION = ("Some special magic numbers are hidden within the following text. Make sure to "
               "memorize it. I will quiz you about the numbers afterwards.\n")
NEEDLE = " One of the special magic numbers for {key} is: {value}."
QUESTION = ("\nWhat is the special magic number for {key} mentioned in the provided text? "
            "The special magic number for {key} mentioned in the provided text is")
_ADJ = ["amber", "brisk", "calm", "dusty", "eager", "fuzzy", "gentle", "hollow", "icy", "jolly",
        "keen", "lucky", "misty", "noble", "olive", "proud", "quiet", "rapid", "silver", "tidy"]
_NOUN = ["anchor", "badger", "candle", "dune", "ember", "falcon", "garden", "harbor", "island",
         "jacket", "kettle", "lantern", "meadow", "needle", "orchard", "pebble", "quarry",
         "river", "saddle", "tunnel"]


@dataclass(frozen=True)
class Haystack:
    """The text needles are hidden in: a corpus ``.jsonl[.gz]`` (its documents of ``source``
    only, unless None), a text file or a folder of text files; ``path`` None: the sample
    corpus."""
    path: str | None = None
    source: str | None = "python-docs"

    def describe(self) -> str:
        return str(self.path or "sample corpus")

    def texts(self):
        from longforge.data import sample_corpus_path

        path = Path(self.path or sample_corpus_path())
        if not path.exists():
            raise FileNotFoundError(f"haystack {path} not found; pass --haystack with a corpus "
                                    "(.jsonl/.jsonl.gz), a text file or a directory of text files")
        if path.is_dir():
            for p in sorted(path.iterdir()):
                if p.is_file():
                    yield p.read_text(errors="replace")
        elif ".jsonl" in path.name:
            from longforge.corpus import Manifest, read_documents

            for doc in read_documents(path, Manifest()):
                if self.source is None or doc.source == self.source:
                    yield doc.text
        else:
            yield path.read_text(errors="replace")


SAMPLE = Haystack()


@lru_cache(maxsize=4)
def _hay_ids(tok, n_tokens: int, hay: Haystack) -> tuple[int, ...]:
    ids: list[int] = []
    for text in hay.texts():
        ids += tok("\n\n" + text.strip(), add_special_tokens=False).input_ids
        if len(ids) >= n_tokens:
            return tuple(ids[:n_tokens])
    raise ValueError(f"haystack {hay.describe()} holds only {len(ids)} tokens, {n_tokens} needed")


@lru_cache(maxsize=4)
def longest_document_ids(tok, hay: Haystack) -> tuple[int, ...]:
    """Tokens of the longest document of the haystack (for perplexity)."""
    return tuple(tok(max(hay.texts(), key=len).strip(), add_special_tokens=False).input_ids)


def _boundary(tok, ids, pos: int, window: int = 64) -> int:
    for p in range(pos, max(0, pos - window), -1):
        if tok.decode(ids[p - 1:p]).rstrip(" ").endswith((".", "\n")):
            return p
    return pos


def build(tok, length: int, depth: float, seed: int, haystack: Haystack = SAMPLE) -> tuple[list[int], str]:
    rng = random.Random(seed)
    key = f"{rng.choice(_ADJ)}-{rng.choice(_NOUN)}"
    value = str(rng.randint(1_000_000, 9_999_999))
    enc = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
    head = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + enc(INSTRUCTION)
    needle, question = enc(NEEDLE.format(key=key, value=value)), enc(QUESTION.format(key=key))
    n = length - len(head) - len(needle) - len(question)
    hay = list(_hay_ids(tok, n, haystack))
    pos = _boundary(tok, hay, round(depth * n))
    return head + hay[:pos] + needle + hay[pos:] + question, value


def score(text: str, expected: str) -> bool:
    return expected in text
