"""Passkey retrieval (the Landmark Attention / Quest template; docs/sparse.md)."""
from __future__ import annotations

import random

from longforge.evals.runner import first_int

INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
               "memorize it. I will quiz you about the important information there.")
FILLER = (" The grass is green. The sky is blue. The sun is yellow. Here we go. There and back "
          "again.")
NEEDLE = " The pass key is {k}. Remember it. {k} is the pass key."
QUESTION = " What is the pass key? The pass key is"


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


def _head(tok) -> list[int]:
    """BOS (when the tokenizer has one) and the instruction: how every prompt starts."""
    return ([tok.bos_token_id] if tok.bos_token_id is not None else []) + _ids(tok, INSTRUCTION)


def needle_free(tok, length: int) -> list[int]:
    """The prompt of every sample up to its pass key line: instruction + filler (``length``
    tokens), so that one prefill of it serves every sample (``runner.PrefixBank``)."""
    head, filler = _head(tok), _ids(tok, FILLER)
    return (head + filler * (length // len(filler) + 1))[:length]


def build(tok, length: int, depth: float, seed: int) -> tuple[list[int], int]:
    """Prompt of about ``length`` tokens with the pass key line after ``depth`` of the filler."""
    key = random.Random(seed).randint(10000, 99999)
    head = _head(tok)
    needle, question, filler = _ids(tok, NEEDLE.format(k=key)), _ids(tok, QUESTION), _ids(tok, FILLER)
    n = max(1, (length - len(head) - len(needle) - len(question)) // len(filler))
    before = round(depth * n)
    ids = head + filler * before + needle + filler * (n - before) + question
    return ids, key


def question_tokens(tok) -> int:
    """The tokens the question takes."""
    return len(_ids(tok, QUESTION))


def score(text: str, expected: int) -> bool:
    return first_int(text) == expected
