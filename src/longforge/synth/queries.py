"""Query prediction: the question(s) a document answers, one per segment.

Predictors share one interface, ``predict(segments: list[str]) -> list[str]``, and a ``settings``
dict that (with the document's content hash) keys the query cache.

* :class:`CausalLMPredictor` - a causal LM with a few-shot prompt (default: bundled Gemma 3 270M).
* :class:`Seq2SeqPredictor` - a doc2query-style encoder-decoder (e.g. a T5 doc2query checkpoint).
* user queries (a column of the input) and the ``document`` ablation need no predictor; see
  :mod:`longforge.synth.pipeline`.
"""
from __future__ import annotations

import hashlib
import json

import torch

# Few-shot examples written for this project (not from the sample corpus). A base model
# continues the "Passage/Question" pattern far more reliably than it follows an instruction.
FEW_SHOT = [
    ("The mitochondrion is the organelle that produces most of the cell's supply of adenosine "
     "triphosphate, used as a source of chemical energy.",
     "Which organelle produces most of the energy of a cell?"),
    ("To undo the last commit but keep its changes, run git reset --soft HEAD~1. The changes "
     "stay staged and can be committed again.",
     "How do I undo the last git commit without losing changes?"),
    ("Tenants must give the landlord written notice at least thirty days before the end of the "
     "lease if they do not intend to renew it.",
     "How much notice must a tenant give before leaving at the end of a lease?"),
]
PROMPT_VERSION = "fewshot-v1"


def build_prompt(segment: str) -> str:
    shots = "".join(f"Passage: {p}\nQuestion: {q}\n\n" for p, q in FEW_SHOT)
    return f"{shots}Passage: {segment.strip()}\nQuestion:"


def first_line(text: str) -> str:
    """The generated question: the text up to the first newline, stripped."""
    return text.strip().split("\n", 1)[0].strip()


def segment_text(text: str, tokenizer, segment_tokens: int, max_segments: int | None) -> list[str]:
    """Split ``text`` into consecutive pieces of at most ``segment_tokens`` predictor tokens
    (character spans from the tokenizer's offsets, so pieces are exact substrings); keep the
    first ``max_segments`` (all when None)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offs = enc["offset_mapping"]
    if not offs:
        return []
    pieces = []
    for start in range(0, len(offs), segment_tokens):
        if max_segments is not None and len(pieces) >= max_segments:
            break
        end = min(start + segment_tokens, len(offs)) - 1
        piece = text[offs[start][0]:offs[end][1]]
        if piece.strip():
            pieces.append(piece)
    return pieces


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class CausalLMPredictor:
    """Greedy few-shot query generation with any HF causal LM (batched, left padding)."""

    def __init__(self, model_spec: str = "gemma-3-270m", device=None, batch_size: int = 8,
                 max_new_tokens: int = 32, segment_tokens: int = 256, model=None):
        from longforge.models import load_model

        lm = model if model is not None else load_model(model_spec, device=device)
        self.model, self.tokenizer = lm.model, lm.tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.settings = {"kind": "causal", "model": model_spec, "prompt": PROMPT_VERSION,
                         "max_new_tokens": max_new_tokens, "segment_tokens": segment_tokens,
                         "decoding": "greedy"}

    @torch.no_grad()
    def _batch(self, segments: list[str]) -> list[str]:
        enc = self.tokenizer([build_prompt(s) for s in segments], return_tensors="pt",
                             padding=True).to(self.model.device)
        out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                  stop_strings=["\n"], tokenizer=self.tokenizer,
                                  pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        return [first_line(t) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def predict(self, segments: list[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(segments), self.batch_size):
            out.extend(self._batch(segments[i:i + self.batch_size]))
        return out


class Seq2SeqPredictor:
    """A doc2query-style encoder-decoder (HF id or local path), greedy decoding."""

    def __init__(self, model_spec: str, device=None, batch_size: int = 16,
                 max_new_tokens: int = 32, segment_tokens: int = 256):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from longforge.models import _local_or_hub, resolve_device

        path = _local_or_hub(model_spec)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(path).to(resolve_device(device)).eval()
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.settings = {"kind": "seq2seq", "model": model_spec, "max_new_tokens": max_new_tokens,
                         "segment_tokens": segment_tokens, "decoding": "greedy"}

    @torch.no_grad()
    def predict(self, segments: list[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(segments), self.batch_size):
            enc = self.tokenizer(segments[i:i + self.batch_size], return_tensors="pt",
                                 padding=True, truncation=True).to(self.model.device)
            gen = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False)
            out.extend(first_line(t) for t in
                       self.tokenizer.batch_decode(gen, skip_special_tokens=True))
        return out
