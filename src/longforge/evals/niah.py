"""Needle in a haystack, RULER style (Hsieh et al. 2024): magic-number needles in real text.

The haystack is the sample corpus's ``python-docs`` documents (prose: the Python reference
topics) in file order, or any ``--haystack`` (a ``.jsonl[.gz]`` corpus, optionally filtered by
``--source``, a text file or a directory of text files), cut to length in tokens; a needle is
inserted after ``depth`` of it, at the nearest preceding sentence or line end. Variants:

* ``single`` (task ``niah``): one needle "One of the special magic numbers for {key} is:
  {value}." at the depth; correct when the answer holds the value as a whole number (RULER
  matches substrings, which would count "54779000000" as holding 5477900).
* ``multikey`` (task ``niah-multikey``): the needle at the depth plus ``needles - 1`` distractor
  needles with other keys at seeded random depths; the question asks for the first key's value.
* ``multivalue`` (task ``niah-multivalue``): ``needles`` needles of the same key with different
  values, one at the depth, the others at seeded random depths; correct when the answer holds
  every value, and scored as well by the share of values it holds (``recall``, RULER's metric
  for this task).
"""
from __future__ import annotations

import random
import re
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


VALUE_DIGITS = 7  # every needle's value is a number of this many digits
VARIANTS = {"single": "niah", "multikey": "niah-multikey", "multivalue": "niah-multivalue"}
QUESTION_ALL = ("\nWhat are all the special magic numbers for {key} mentioned in the provided "
                "text? The special magic numbers for {key} mentioned in the provided text are")


def _head(tok) -> list[int]:
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    return bos + tok(INSTRUCTION, add_special_tokens=False).input_ids


def _value(rng: random.Random) -> str:
    return str(rng.randint(10 ** (VALUE_DIGITS - 1), 10 ** VALUE_DIGITS - 1))


def needle_free(tok, length: int, haystack: Haystack = SAMPLE) -> list[int]:
    """The prompt of every sample up to its first needle: instruction + haystack (``length``
    tokens in all), so that one prefill of it serves every sample (``runner.PrefixBank``)."""
    head = _head(tok)
    return head + list(_hay_ids(tok, length - len(head), haystack))


@dataclass(frozen=True)
class Needle:
    """Where a needle lies in a prompt: its tokens ``[start, end)``, its value's tokens
    ``[value_start, value_end)``, and whether it is the one asked for (``target``)."""

    key: str
    value: str
    start: int
    end: int
    value_start: int
    value_end: int
    target: bool


def build(tok, length: int, depth: float, seed: int, haystack: Haystack = SAMPLE,
          variant: str = "single", needles: int = 4) -> tuple[list[int], str | list[str]]:
    """A prompt of ``length`` tokens and the expected answer (a value, or for ``multivalue`` the
    list of values)."""
    ids, expected, _ = layout(tok, length, depth, seed, haystack, variant, needles)
    return ids, expected


def layout(tok, length: int, depth: float, seed: int, haystack: Haystack = SAMPLE,
           variant: str = "single", needles: int = 4
           ) -> tuple[list[int], str | list[str], list[Needle]]:
    """:func:`build`'s prompt and answer, and where each needle lies in it (in prompt order)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: choose one of {sorted(VARIANTS)}")
    rng = random.Random(seed)
    enc = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
    if variant == "single":
        key = f"{rng.choice(_ADJ)}-{rng.choice(_NOUN)}"
        value = _value(rng)
        placed = [(depth, key, value)]
        question, expected = QUESTION.format(key=key), value
    else:
        keys = rng.sample([f"{a}-{b}" for a in _ADJ for b in _NOUN],
                          needles if variant == "multikey" else 1)
        values = [_value(rng) for _ in range(needles)]
        depths = [depth] + [rng.random() for _ in range(needles - 1)]
        if variant == "multikey":
            placed = list(zip(depths, keys, values))
            question, expected = QUESTION.format(key=keys[0]), values[0]
        else:
            placed = [(d, keys[0], v) for d, v in zip(depths, values)]
            question, expected = QUESTION_ALL.format(key=keys[0]), values
    head, q = _head(tok), enc(question)
    texts = [enc(NEEDLE.format(key=k, value=v)) for _, k, v in placed]
    n = length - len(head) - sum(len(t) for t in texts) - len(q)
    hay = list(_hay_ids(tok, n, haystack))
    cuts = sorted(((_boundary(tok, hay, round(d * n)), i) for i, (d, _, _) in enumerate(placed)))
    ids, prev, where = list(head), 0, []
    for pos, i in cuts:
        ids += hay[prev:pos]
        _, key, value = placed[i]
        a, b = _value_tokens(tok, texts[i], value)
        where.append(Needle(key, value, len(ids), len(ids) + len(texts[i]), len(ids) + a,
                            len(ids) + b, i == 0 or variant == "multivalue"))
        ids += texts[i]
        prev = pos
    return ids + hay[prev:] + q, expected, where


def _value_tokens(tok, needle: list[int], value: str) -> tuple[int, int]:
    """The tokens ``[a, b)`` of a needle's ids whose text overlaps the value's characters."""
    text = tok.decode(needle)
    lo = text.rindex(value)
    hi = lo + len(value)
    ends = [len(tok.decode(needle[:i + 1])) for i in range(len(needle))]
    starts = [0] + ends[:-1]
    inside = [i for i, (s, e) in enumerate(zip(starts, ends)) if s < hi and e > lo]
    return inside[0], inside[-1] + 1


def question_tokens(tok, variant: str = "single") -> int:
    """The most tokens a question of ``variant`` takes (over every key)."""
    template = QUESTION_ALL if variant == "multivalue" else QUESTION
    return max(len(tok(template.format(key=f"{a}-{b}"), add_special_tokens=False).input_ids)
               for a in _ADJ for b in _NOUN)


def holds(text: str, value: str) -> bool:
    """``value`` is in ``text`` as a whole number: not part of a longer run of digits."""
    return re.search(rf"(?<!\d){re.escape(value)}(?!\d)", text) is not None


def score(text: str, expected) -> bool:
    if isinstance(expected, list):
        return all(holds(text, v) for v in expected)
    return holds(text, expected)


def recall(text: str, expected: list[str]) -> float:
    """The share of the expected values that the answer holds."""
    return sum(holds(text, v) for v in expected) / len(expected)
