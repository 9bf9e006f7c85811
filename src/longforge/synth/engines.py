"""Generation engines for query prediction: the same prompts (token ids), two implementations.

Every query predictor builds its prompt as a fixed ``prefix`` (the same token ids for every
segment: the few-shot examples, or the chat template's system turn and the instruction) followed
by a per-segment ``rest``; an engine continues ``prefix + rest`` greedily until a
:class:`Stop` rule or ``max_new_tokens`` and returns the new text of each prompt.

* :class:`HFEngine` (``--engine hf``): transformers ``generate``. The prefix's KV cache is
  computed once and copied into every batch (``reuse_prefix``), so a segment costs only its own
  tokens; prompts are batched by length (``sort_by_length``) with the padding *between* prefix
  and rest (masked, positions continue after the prefix), so the shared prefix sits at the same
  positions in every row. Both change only floating-point rounding, not the computation, like the
  batch size; with both off this is plain left-padded batched ``generate``.
* :class:`LlamaCppEngine` (``--engine llamacpp``): llama.cpp through the ``xllamacpp`` wheels
  (``pip install 'longforge[llamacpp]'``), on a GGUF file as it is (quantized). llama.cpp's
  prompt cache keeps the KV of the previous prompt's common prefix, so the fixed prefix is
  computed once here too; the cache is put in the same state before every prompt, so an answer
  does not depend on the prompts before it. Its outputs are not bit-identical to fp32
  transformers, so the query cache is keyed by engine.

Both are deterministic: greedy decoding, the same inputs in the same order give the same bytes
(llama.cpp's in any order; transformers' batches change rounding only).
"""
from __future__ import annotations

import copy
import inspect
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

# Plain greedy decoding, whatever a model's generation config asks for (a hub model's
# repetition penalty or sampling settings would otherwise apply).
GREEDY = dict(do_sample=False, num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0,
              temperature=None, top_p=None, top_k=None)


def pad_id_of(tok) -> int:
    """The id of padding tokens (of a batch, or of a sequence: ``n_pad``): the tokenizer's pad
    token, or its EOS when it has none."""
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


@dataclass(frozen=True)
class Stop:
    """When a generated answer is complete: once its complete lines (those ended by a newline)
    number ``lines``, counting every line (``skip_blank=False``: the few-shot question ends at the
    first newline, as it always did), only non-blank ones (``skip_blank=True``), or, with
    ``count``, once ``count(complete lines) >= lines`` (e.g. the queries they hold, so that a
    dropped line of code does not end an answer early)."""

    lines: int = 1
    skip_blank: bool = False
    count: Callable[[str], int] | None = None

    def reached(self, text: str) -> bool:
        done = text.rpartition("\n")[0] if "\n" in text else None
        if done is None:
            return False
        if self.count is not None:
            return self.count(done) >= self.lines
        lines = done.split("\n")
        return (sum(1 for line in lines if line.strip()) if self.skip_blank else len(lines)) >= self.lines


class HFEngine:
    """Greedy batched ``generate`` of a transformers causal LM (see the module docstring)."""

    name = "hf"

    def __init__(self, model, tokenizer, batch_size: int = 8, reuse_prefix: bool = True,
                 sort_by_length: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.reuse_prefix, self.sort_by_length = batch_size, reuse_prefix, sort_by_length
        self.pad_id = pad_id_of(tokenizer)
        self._prefix: tuple[tuple[int, ...], object] | None = None
        self.stats: Counter = Counter()   # prefill / decode tokens, prompts

    @torch.no_grad()
    def _prefix_cache(self, prefix: list[int]):
        """The KV cache of ``prefix`` (batch 1), computed once per distinct prefix."""
        key = tuple(prefix)
        if self._prefix is None or self._prefix[0] != key:
            ids = torch.tensor([prefix], device=self.model.device)
            keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(
                self.model.forward).parameters else {}   # its logits are not needed
            out = self.model(input_ids=ids, use_cache=True, **keep)
            self._prefix = (key, out.cache if hasattr(out, "cache") else out.past_key_values)
            self.stats["prefill_tokens"] += len(prefix)
        return self._prefix[1]

    def _stopping(self, start: int, stop: Stop):
        from transformers import StoppingCriteria, StoppingCriteriaList

        tok = self.tokenizer

        class _Lines(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.tensor([stop.reached(tok.decode(row[start:], skip_special_tokens=True))
                                     for row in input_ids.tolist()], device=input_ids.device)

        return StoppingCriteriaList([_Lines()])

    @torch.no_grad()
    def _batch(self, prefix: list[int], rests: list[list[int]], max_new_tokens: int,
               stop: Stop) -> list[str]:
        width = max(map(len, rests))
        if self.reuse_prefix:
            rows = [prefix + [self.pad_id] * (width - len(r)) + r for r in rests]
            mask = [[1] * len(prefix) + [0] * (width - len(r)) + [1] * len(r) for r in rests]
            cache = copy.deepcopy(self._prefix_cache(prefix))
            cache.batch_repeat_interleave(len(rests))
            kw = {"cache": cache}
            self.stats["prefill_tokens"] += sum(map(len, rests))
        else:
            rows = [[self.pad_id] * (width - len(r)) + prefix + r for r in rests]
            mask = [[0] * (width - len(r)) + [1] * (len(prefix) + len(r)) for r in rests]
            kw = {}
            self.stats["prefill_tokens"] += sum(len(prefix) + len(r) for r in rests)
        ids = torch.tensor(rows, device=self.model.device)
        start = ids.shape[1]
        out = self.model.generate(
            input_ids=ids, attention_mask=torch.tensor(mask, device=self.model.device),
            max_new_tokens=max_new_tokens, pad_token_id=self.pad_id,
            stopping_criteria=self._stopping(start, stop), **GREEDY, **kw)
        new = out[:, start:].tolist()
        ends = set(_as_list(self.model.generation_config.eos_token_id)) | {self.pad_id}
        for row in new:  # the tokens each row decoded: up to and including its end token
            n = next((i + 1 for i, t in enumerate(row) if t in ends), len(row))
            self.stats["decode_tokens"] += n
        self.stats["prompts"] += len(rests)
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def _batches(self, order: list[int], lengths: list[int], prefix_len: int,
                 max_new_tokens: int) -> list[list[int]]:
        """Consecutive rows of ``order``, ``batch_size`` at most. With the padding between prefix
        and rest, a sliding-window layer would see the pads as positions and lose prefix tokens
        from its window, so for such a model a row joins a batch only when the batch then needs
        no padding or its longest prompt and answer fit in the window."""
        window = sliding_window(self.model) if self.reuse_prefix else None
        batches: list[list[int]] = []
        for i in order:
            b = batches[-1] if batches else None
            fits = b is not None and len(b) < self.batch_size and (
                window is None or {lengths[j] for j in b} == {lengths[i]}
                or prefix_len + max(lengths[j] for j in [*b, i]) + max_new_tokens <= window)
            if fits:
                b.append(i)
            else:
                batches.append([i])
        return batches

    def generate(self, prefix: list[int], rests: list[list[int]], max_new_tokens: int,
                 stop: Stop) -> list[str]:
        order = (sorted(range(len(rests)), key=lambda i: (len(rests[i]), i))
                 if self.sort_by_length else list(range(len(rests))))
        out: list[str | None] = [None] * len(rests)
        for chunk in self._batches(order, [len(r) for r in rests], len(prefix), max_new_tokens):
            for j, text in zip(chunk, self._batch(prefix, [rests[j] for j in chunk],
                                                  max_new_tokens, stop)):
                out[j] = text
        return out  # type: ignore[return-value]


def sliding_window(model) -> int | None:
    """The sliding window of a model with sliding-window attention layers (else None)."""
    cfg = getattr(model, "config", None)
    types = getattr(cfg, "layer_types", None) or []
    return getattr(cfg, "sliding_window", None) if "sliding_attention" in types else None


def _as_list(x) -> list[int]:
    return [x] if isinstance(x, int) else list(x or [])


def llamacpp_available() -> bool:
    from importlib.util import find_spec

    return find_spec("xllamacpp") is not None


class LlamaCppEngine:
    """Greedy generation with llama.cpp (``xllamacpp``) on a GGUF file, one prompt at a time.

    llama.cpp runs its server in-process (``xllamacpp.Server``): requests go to it as Python
    calls; it also listens on a random port of 127.0.0.1, guarded by a random API key that is
    never shown. ``threads``: CPU threads (on cores shared with other jobs, 1 is much faster than
    2: llama.cpp's threads wait for each other at every layer)."""

    name = "llamacpp"

    def __init__(self, gguf_path: str | Path, n_ctx: int = 4096, threads: int = 1):
        try:
            import xllamacpp as xlc
        except ImportError:
            raise RuntimeError("--engine llamacpp needs the xllamacpp package: "
                               "pip install 'longforge[llamacpp]'") from None
        p = xlc.CommonParams()
        p.model.path = str(gguf_path)
        p.n_ctx, p.n_parallel, p.warmup, p.verbosity = n_ctx, 1, False, -1
        p.cpuparams.n_threads = p.cpuparams_batch.n_threads = threads
        p.swa_full = True   # keep the KV of sliding-window layers whole, so a prefix can be reused
        p.api_keys = [secrets.token_hex(16)]
        self.n_ctx, self.threads = n_ctx, threads
        self.server = xlc.Server(p)
        self.stats: Counter = Counter()
        self._primed: list[int] | None = None

    def _prime(self, prefix: list[int]) -> None:
        """Leave the server's cache holding the prefix (and one token after it) in the same state
        before every prompt: llama.cpp reuses the longest common prefix of the previous prompt,
        and its numbers depend on how a prompt is split into evaluation batches, so without this
        a segment's answer would depend on the segment before it. The state settles from the
        second priming on (the last prefix token is then always re-evaluated alone)."""
        for _ in range(2 if self._primed != prefix else 1):
            self.server.handle_completions({"prompt": prefix, "max_tokens": 1, "temperature": 0.0,
                                            "top_k": 1, "cache_prompt": True})
        self._primed = list(prefix)

    def _one(self, ids: list[int], max_new_tokens: int, stop: Stop) -> str:
        if len(ids) + max_new_tokens > self.n_ctx:
            raise ValueError(f"a prompt of {len(ids)} tokens and {max_new_tokens} new ones do not "
                             f"fit the llama.cpp context of {self.n_ctx}")
        parts: list[str] = []

        def chunk(c: dict) -> bool:
            if "error" in c:
                raise RuntimeError(f"llama.cpp: {c['error']}")
            choice = c["choices"][0]
            parts.append(choice["text"])
            self.stats["decode_tokens"] += choice.get("finish_reason") is None  # one a token
            return stop.reached("".join(parts))   # True stops the stream

        res = self.server.handle_completions(
            {"prompt": ids, "max_tokens": max_new_tokens, "temperature": 0.0, "top_k": 1,
             "seed": 0, "cache_prompt": True, "stream": True}, chunk)
        if isinstance(res, dict) and "error" in res:
            raise RuntimeError(f"llama.cpp: {res['error']}")
        return "".join(parts)

    def generate(self, prefix: list[int], rests: list[list[int]], max_new_tokens: int,
                 stop: Stop) -> list[str]:
        out = []
        for r in rests:
            self._prime(prefix)
            out.append(self._one(prefix + r, max_new_tokens, stop))
        self.stats["prompts"] += len(rests)
        return out


def gguf_path(spec: str) -> Path:
    """The GGUF file of a predictor spec: a bundled model's (assembled on first use) or a
    ``.gguf`` path. Anything else cannot run on llama.cpp."""
    from longforge.models.bundled import bundled, gguf_file

    b = bundled(spec)
    if b is not None:
        return gguf_file(b)
    p = Path(spec).expanduser()
    if p.suffix.lower() == ".gguf":
        return p
    raise ValueError(f"--engine llamacpp runs GGUF models only: a bundled model or a .gguf file, "
                     f"not {spec!r}")


def is_gguf_spec(spec: str) -> bool:
    from longforge.models.bundled import bundled

    return bundled(spec) is not None or Path(spec).suffix.lower() == ".gguf"
