"""Query prediction: the question(s) a document answers, per segment.

Predictors share one interface, ``predict(segments: list[str]) -> list[str]`` (one answer per
segment), and a ``settings`` dict that (with the document's content hash) keys the query cache.

* :class:`CausalLMPredictor` - a causal LM with a few-shot prompt (default: bundled Gemma 3 270M);
  its answer is one question.
* :class:`InstructPredictor` - an instruct model (chat template) asked zero-shot for
  ``queries_per_segment`` web-search queries (default: bundled Qwen2.5-Coder-0.5B-Instruct); its
  answer is the model's text, one query a line, which :func:`parse_queries` cleans up.
* :class:`Seq2SeqPredictor` - a doc2query-style encoder-decoder (e.g. a T5 doc2query checkpoint).
* user queries (a column of the input) and the ``document`` ablation need no predictor; see
  :mod:`longforge.synth.pipeline`.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import torch

from longforge.synth.engines import HFEngine, LlamaCppEngine, Stop, gguf_path

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


FEW_SHOT_PREFIX = "".join(f"Passage: {p}\nQuestion: {q}\n\n" for p, q in FEW_SHOT)


def fewshot_rest(segment: str) -> str:
    """The per-segment part of the few-shot prompt (after :data:`FEW_SHOT_PREFIX`)."""
    return f"Passage: {segment.strip()}\nQuestion:"


def build_prompt(segment: str) -> str:
    return FEW_SHOT_PREFIX + fewshot_rest(segment)


# The zero-shot request of the instruct predictor. Its version (and a hash of its text) key the
# query cache: change the text, change the version.
INSTRUCT_PROMPT_VERSION = "instruct-v1"
INSTRUCT_SYSTEM = "You are a helpful assistant."
INSTRUCT_REQUEST = (
    "Write {n} that a person could type into a web search engine to find the information in "
    "the passage below. Every question names its subject and makes sense on its own, without "
    "the passage: never say \"the passage\", \"the code\", \"the text\" or \"the program\". "
    "Write only the questions, one per line, in plain English, without code, URLs, numbering "
    "or quotes.\n\nPassage:\n")
_NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_SEGMENT = "\x00SEGMENT\x00"   # where the segment goes in the chat template


def instruct_request(k: int) -> str:
    n = "one question" if k == 1 else f"{_NUMBERS[k - 1] if k <= 10 else k} different questions"
    return INSTRUCT_REQUEST.format(n=n)


def instruct_parts(tokenizer, k: int) -> tuple[str, str]:
    """The instruct prompt around the segment: (text before it, text after it). The first part
    (system turn, instruction) is the same for every segment."""
    from longforge.models.chat import chat_prompt

    head, _, tail = chat_prompt(tokenizer, instruct_request(k) + _SEGMENT,
                                system=INSTRUCT_SYSTEM).partition(_SEGMENT)
    return head, tail


def _text_sha(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:12]


# ---------------------------------------------------------------- post-processing of answers
PARSE_VERSION = "lines-v1"   # the rules below; keys the cache with the stop rule that uses them
MAX_QUERY_WORDS = 20
_MARKUP = re.compile(r"^\s*(?:[-*+\u2022>#]+\s*|\(?\d{1,2}[.):\]]\s*|\(?[a-hA-H][.)]\s+|"
                     r"(?:query|question|q)\s*\d*\s*[:.)-]\s*)", re.I)
_URL = re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+", re.I)
_PLAIN = re.compile(r"^[^\W\d_]+(?:['\u2019-][^\W\d_]+)*[?!.,;:]?$")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019*_ "


def clean_query(line: str) -> tuple[str | None, str | None]:
    """One answer line as a query, or None and why it is dropped: ``heading`` (a line ending with
    ':' such as "Here are three questions:"), ``url`` / ``code`` (fewer than two plain words, or
    fewer than 60% plain words, once URLs are removed: a URL, a command, an identifier), ``long``
    (more than :data:`MAX_QUERY_WORDS` words: an answer, not a query). Numbering, bullets,
    surrounding quotes or backticks and markdown emphasis are stripped; backticks inside are
    removed (their content kept: "the `tar` command" is "the tar command")."""
    text = line.strip()
    for _ in range(2):   # "1. **Query:** ..." has two layers
        text = _MARKUP.sub("", text).strip(_QUOTES)
    if not text:
        return None, None
    if text.endswith(":"):
        return None, "heading"
    text = text.replace("`", "").replace("**", "")
    no_url = _URL.sub(" ", text)
    words = no_url.split()
    plain = sum(bool(_PLAIN.match(w)) for w in words)
    if plain < 2 or plain < 0.6 * len(words):
        return None, "url" if no_url != text else "code"
    if len(words) > MAX_QUERY_WORDS:
        return None, "long"
    return " ".join(words), None


def parse_queries(text: str, k: int) -> tuple[list[str], Counter]:
    """The first ``k`` distinct queries of an instruct answer (one a line; see
    :func:`clean_query`), and the count of dropped lines by reason (``duplicate`` for a repeat,
    ``extra`` for lines past the ``k``-th query)."""
    out: list[str] = []
    dropped: Counter = Counter()
    seen: set[str] = set()
    for line in text.split("\n"):
        q, why = clean_query(line)
        if q is not None and q.lower() in seen:
            q, why = None, "duplicate"
        if q is not None and len(out) >= k:
            q, why = None, "extra"
        if q is None:
            if why:
                dropped[why] += 1
            continue
        seen.add(q.lower())
        out.append(q)
    return out, dropped


def _query_count(k: int):
    """For :class:`Stop`: the queries in the complete lines of an answer so far, or ``k`` once
    it has ``2 k`` non-blank lines (a model repeating itself or writing code would otherwise run
    to the token budget)."""
    def count(text: str) -> int:
        if sum(1 for line in text.split("\n") if line.strip()) >= 2 * k:
            return k
        return len(parse_queries(text, k)[0])
    return count


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


def precision_key(dtype: torch.dtype) -> dict:
    """The predictor's precision for the cache key: nothing for fp32 (the key older versions
    wrote, all fp32), its name otherwise (bf16 and fp16 write other queries)."""
    return {} if dtype == torch.float32 else {"dtype": str(dtype).removeprefix("torch.")}


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class CausalLMPredictor:
    """Greedy few-shot query generation with a causal LM: one question per segment.

    ``engine``: ``hf`` (transformers; ``model`` may be the loaded predictor) or ``llamacpp``
    (the spec's GGUF file; see :mod:`longforge.synth.engines`); ``threads``: its CPU threads
    (torch's for hf); ``dtype`` (hf only): the model's precision, ``auto`` as
    :func:`longforge.models.load_model` (fp32 on CPU); other than fp32 it keys the cache.
    ``reuse_prefix`` and
    ``sort_by_length`` (hf only) change floating-point rounding only, like the batch size, so they
    do not key the cache; the engine does, except ``hf``, which keeps the key older versions
    wrote (the prompt is the same token ids: the few-shot prefix and the segment part are
    tokenized apart, which gives the ids of the whole prompt)."""

    kind, prompt_version = "causal", PROMPT_VERSION

    def __init__(self, model_spec: str = "gemma-3-270m", device=None, batch_size: int = 8,
                 max_new_tokens: int = 32, segment_tokens: int = 256, model=None,
                 engine: str = "hf", threads: int = 1, reuse_prefix: bool = True,
                 sort_by_length: bool = True, dtype=None):
        self.spec, self.max_new_tokens, self.segment_tokens = model_spec, max_new_tokens, segment_tokens
        self._precision: dict = {}
        if engine == "hf":
            from longforge.models import load_model

            if threads and threads != torch.get_num_threads():
                torch.set_num_threads(threads)
            lm = model if model is not None else load_model(model_spec, device=device, dtype=dtype)
            self.tokenizer = lm.tokenizer
            weights = next(lm.model.parameters())
            if model is not None and dtype not in (None, "auto"):
                from longforge.models import resolve_dtype

                if resolve_dtype(dtype, weights.device) != weights.dtype:
                    raise ValueError(f"dtype {dtype!r} asked for, but the predictor given is "
                                     f"loaded in {weights.dtype}")
            self._precision = precision_key(weights.dtype)
            self.engine = HFEngine(lm.model, lm.tokenizer, batch_size, reuse_prefix, sort_by_length)
        elif engine == "llamacpp":
            if dtype not in (None, "auto"):
                raise ValueError("dtype applies to the hf engine (llama.cpp runs the GGUF file's "
                                 "own types)")
            from longforge.models import load_tokenizer

            self.tokenizer = model.tokenizer if model is not None else load_tokenizer(model_spec)
            self.engine = None   # made by _init_prompt, once the prompt's length is known
        else:
            raise ValueError(f"unknown engine {engine!r}")
        self._init_prompt()
        if engine == "llamacpp":
            n_ctx = len(self.prefix) + segment_tokens + 64 + self.budget
            self.engine = LlamaCppEngine(gguf_path(model_spec), n_ctx=max(n_ctx, 1024), threads=threads)
        self.settings = self._settings(engine)

    def _init_prompt(self) -> None:
        tok = self.tokenizer
        self.prefix = tok(FEW_SHOT_PREFIX).input_ids   # with the tokenizer's BOS, if any
        self.rest = lambda seg: tok(fewshot_rest(seg), add_special_tokens=False).input_ids
        self.stop, self.budget = Stop(1), self.max_new_tokens

    def _settings(self, engine: str) -> dict:
        return {"kind": self.kind, "model": self.spec, "prompt": self.prompt_version,
                "max_new_tokens": self.max_new_tokens, "segment_tokens": self.segment_tokens,
                "decoding": "greedy", **({"engine": engine} if engine != "hf" else {}),
                **self._precision}

    def answers(self, segments: list[str]) -> list[str]:
        """The model's raw text for each segment."""
        return self.engine.generate(self.prefix, [self.rest(s) for s in segments], self.budget,
                                    self.stop)

    def predict(self, segments: list[str]) -> list[str]:
        return [first_line(t) for t in self.answers(segments)]


class InstructPredictor(CausalLMPredictor):
    """Zero-shot web-search queries from an instruct model (chat template): one generation per
    segment that lists ``queries_per_segment`` queries, one a line, greedy; it stops at the end of
    the turn or once the complete lines hold that many queries (:func:`parse_queries`), within
    ``queries_per_segment * max_new_tokens`` new tokens. ``predict`` returns the raw answers (the
    cache keeps them as generated); :func:`parse_queries` makes the queries."""

    kind, prompt_version = "instruct", INSTRUCT_PROMPT_VERSION

    def __init__(self, model_spec: str = "qwen2.5-coder-0.5b-instruct", queries_per_segment: int = 3,
                 **kw):
        self.k = queries_per_segment
        super().__init__(model_spec, **kw)

    def _init_prompt(self) -> None:
        tok = self.tokenizer
        head, tail = instruct_parts(tok, self.k)
        self.prefix = tok(head, add_special_tokens=False).input_ids   # the template has its specials
        self.rest = lambda seg: tok(seg.strip() + tail, add_special_tokens=False).input_ids
        self.stop = Stop(self.k, count=_query_count(self.k))
        self.budget = self.k * self.max_new_tokens
        self._sha = _text_sha(head, tail)

    def _settings(self, engine: str) -> dict:
        return {**super()._settings(engine), "engine": engine, "prompt_sha": self._sha,
                "parse": PARSE_VERSION, "queries_per_segment": self.k}

    def predict(self, segments: list[str]) -> list[str]:
        return self.answers(segments)


class Seq2SeqPredictor:
    """A doc2query-style encoder-decoder (HF id or local path), greedy decoding."""

    def __init__(self, model_spec: str, device=None, batch_size: int = 16,
                 max_new_tokens: int = 32, segment_tokens: int = 256, dtype=None):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from longforge.models import _local_or_hub, resolve_device, resolve_dtype

        path = _local_or_hub(model_spec)
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=dt).to(dev).eval()
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.settings = {"kind": "seq2seq", "model": model_spec, "max_new_tokens": max_new_tokens,
                         "segment_tokens": segment_tokens, "decoding": "greedy",
                         **precision_key(dt)}

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
