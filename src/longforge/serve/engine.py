"""One model, its document KV cache, and the generation of one request as a sequence of steps.

:meth:`Engine.prepare` turns a request's tokens and options into a :class:`Job` (or raises
:class:`RequestError`, which the server answers 400); :meth:`Engine.steps` runs it as a generator
that does one model forward per ``next()``: a prefill chunk or one decode step. The
:class:`Scheduler` interleaves the steps of the jobs in flight on one worker thread.

Generation follows ``longforge.evals.runner``: a dense prefill in chunks of ``prefill_chunk``
tokens (a chunk attends to the cache so far and causally within itself, so no chunk builds a
prompt x prompt mask) into a :class:`~longforge.sparse.hf.SparseCache` that carries the request's
policy, then one token per step, each decode step's attention chosen by the policy. The
prompt's first blocks come from the document cache (:mod:`longforge.serve.kvcache`) when they
are there; the blocks it prefills are stored for the next request.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch

from longforge.evals.runner import body
from longforge.models import cache_kw, weights_fingerprint
from longforge.models.chat import is_chat_model, stop_token_ids
from longforge.serve.kvcache import (DocumentCache, ModelIdentity, block_keys, capture,
                                     new_cache, restore, stop_recording)
from longforge.sparse.hf import sparse_attention
from longforge.sparse.policies import NAMES, Dense, Policy, make_policy

log = logging.getLogger(__name__)

# How a chat without a template (a base model) is written as text ("User: ...\n\n" per message,
# then "Assistant:"); generation also stops where the model would begin another user or system
# turn.
PLAIN_ROLES = {"system": "System", "developer": "System", "user": "User",
               "assistant": "Assistant"}
PLAIN_STOPS = ("\nUser:", "\nSystem:")


class RequestError(ValueError):
    """A request the server cannot run as asked (answered 400 with ``param`` and ``code``)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


@dataclass
class EngineSettings:
    token_budget: int = 2048         # the default budget; Quest above it, dense up to it
    page_size: int = 16
    dense_layers: int | str = "auto"
    block_tokens: int = 256          # document-cache granularity (a whole number of pages)
    prefill_chunk: int = 2048
    kv_cache_bytes: int = 2 << 30
    kv_cache_dir: str | None = None
    max_prompt_tokens: int | None = None  # None: the model's context length
    max_new_tokens: int = 1024

    def __post_init__(self):
        if self.page_size < 1 or self.block_tokens < self.page_size or \
                self.block_tokens % self.page_size:
            raise ValueError(f"block_tokens ({self.block_tokens}) must be a positive multiple "
                             f"of page_size ({self.page_size})")
        if self.prefill_chunk < 128:
            raise ValueError("prefill_chunk must be >= 128 tokens")
        if self.token_budget < 1 or self.max_new_tokens < 1 or self.kv_cache_bytes < 0:
            raise ValueError("token_budget and max_new_tokens must be >= 1, kv_cache_bytes >= 0")


@dataclass
class Job:
    """One generation. ``emit`` receives ``("text", str)``, then ``("done", finish_reason,
    usage)`` or ``("error", exception)``; it is called on the worker thread."""

    ids: list[int]
    policy: Policy
    max_new: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    emit: Callable = lambda event: None
    deadline: float | None = None    # time.monotonic() after which the job is stopped
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class Engine:
    def __init__(self, lm, settings: EngineSettings | None = None):
        self.model, self.tokenizer, self.spec = lm.model, lm.tokenizer, lm.spec
        if self.tokenizer is None:
            raise ValueError("the server needs the model's tokenizer")
        self.settings = s = settings or EngineSettings()
        self.device = self.model.device
        self.context = int(getattr(self.model.config.get_text_config(),
                                   "max_position_embeddings", 0) or 0) or None
        self.max_prompt = s.max_prompt_tokens or self.context
        self.identity = ModelIdentity(self.spec, weights_fingerprint(self.model),
                                      str(self.model.dtype).replace("torch.", ""), s.page_size,
                                      s.block_tokens)
        self.documents = DocumentCache(self.identity, s.kv_cache_bytes, s.kv_cache_dir)
        self.stop_ids = frozenset(stop_token_ids(self.tokenizer, self.model))
        self.counters = dict.fromkeys(("requests", "prompt_tokens", "cached_tokens",
                                       "prefilled_tokens", "completion_tokens"), 0)
        self._count_lock = threading.Lock()

    # ---------------------------------------------------------------- prompts
    @property
    def chat_template(self) -> bool:
        return is_chat_model(self.tokenizer)

    def chat_ids(self, messages: list[dict]) -> tuple[list[int], tuple[str, ...]]:
        """Token ids of a chat (the template's, or the plain rendering) and its extra stops."""
        if self.chat_template:
            try:
                text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                          add_generation_prompt=True)
            except Exception as exc:  # the template's own checks (roles, order) are jinja errors
                raise RequestError(f"the model's chat template refused the messages: {exc}",
                                   "messages") from None
            return self.tokenizer(text, add_special_tokens=False).input_ids, ()
        text = "".join(f"{PLAIN_ROLES[m['role']]}: {m['content']}\n\n" for m in messages)
        return self.tokenizer(text + "Assistant:").input_ids, PLAIN_STOPS

    def completion_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt).input_ids
        vocab = self.model.get_input_embeddings().num_embeddings
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise RequestError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})",
                               "prompt")
        return list(prompt)

    # ---------------------------------------------------------------- jobs
    def prepare(self, ids: list[int], *, max_tokens: int | None = None, temperature=1.0,
                top_p=1.0, seed=None, stop=(), policy: str | None = None,
                token_budget: int | None = None, page_size: int | None = None,
                param: str = "messages") -> Job:
        s = self.settings
        if not ids:
            raise RequestError("the prompt is empty", param)
        if self.max_prompt and len(ids) > self.max_prompt:
            raise RequestError(f"the prompt has {len(ids)} tokens; this server takes at most "
                               f"{self.max_prompt}", param, "context_length_exceeded")
        if max_tokens is not None and max_tokens > s.max_new_tokens:
            raise RequestError(f"max_tokens is {max_tokens}; this server generates at most "
                               f"{s.max_new_tokens} tokens per request", "max_tokens")
        new = max_tokens or s.max_new_tokens
        if self.context:
            room = self.context - len(ids)
            if max_tokens is not None and max_tokens > room:
                raise RequestError(f"{len(ids)} prompt tokens + max_tokens {max_tokens} exceed "
                                   f"the model's context of {self.context}", "max_tokens",
                                   "context_length_exceeded")
            new = min(new, room)
            if new < 1:
                raise RequestError(f"the prompt fills the model's context of {self.context}",
                                   param, "context_length_exceeded")
        if page_size is not None and page_size != s.page_size:
            raise RequestError(f"page_size {page_size}: this server's cache pages hold "
                               f"{s.page_size} tokens (--page-size); the document cache is "
                               "kept per page size", "page_size")
        return Job(list(ids), self.policy(policy, token_budget, len(ids)), new, temperature,
                   top_p, seed, tuple(stop))

    def policy(self, name: str | None, budget: int | None, length: int) -> Policy:
        """The request's policy: as named, or Quest when the prompt exceeds the budget and dense
        when it does not."""
        s = self.settings
        budget = budget or s.token_budget
        if name is None:
            name = "quest" if length > budget else "dense"
        if name not in NAMES:
            raise RequestError(f"unknown policy {name!r}; choose one of {', '.join(NAMES)}",
                               "policy")
        if name == "dense":
            return Dense(page_size=s.page_size, dense_layers=s.dense_layers)
        return make_policy(name, budget, page_size=s.page_size, dense_layers=s.dense_layers)

    @staticmethod
    def _last_forward(policy: Policy) -> int:
        """The fewest prompt tokens the last prefill forward holds: two, since a one-token
        forward is a decode step to the attention function (it would run the policy, not the
        dense prefill); a policy that compresses at the end of prefill (SnapKV) gets its whole
        observation window in that forward, as it does without the cache."""
        if policy.compresses_prefill and policy.token_budget is not None:
            return max(2, min(policy.window, policy.token_budget))
        return 2

    def _reusable(self, policy: Policy, length: int) -> int:
        """How many leading prompt tokens may come from the document cache: none for a policy
        that needs the prefill's attention scores (H2O; they are not cached), else all but
        those of the last prefill forward (:meth:`_last_forward`)."""
        return 0 if policy.needs_scores else length - self._last_forward(policy)

    def _chunks(self, start: int, end: int, min_last: int):
        bounds = [*range(start, end, self.settings.prefill_chunk), end]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < min_last:
            del bounds[-2]
        return zip(bounds, bounds[1:])

    @contextmanager
    def running(self):
        """The context the worker thread runs every step in."""
        with sparse_attention(self.model, Dense()), torch.no_grad():
            yield

    def steps(self, job: Job):
        """Run ``job``: one model forward per ``next()`` (call inside :meth:`running`)."""
        model, L = self.model, len(job.ids)
        cache, logits, n0 = yield from self._prefill(job)
        self._count(requests=1, prompt_tokens=L, cached_tokens=n0, prefilled_tokens=L - n0)
        gen = torch.Generator().manual_seed(secrets.randbits(63) if job.seed is None
                                            else job.seed)
        text = TextStream(self.tokenizer, job.stop)
        finish, out = "length", 0
        for i in range(job.max_new):
            tok = sample(logits, job.temperature, job.top_p, gen)
            out += 1
            if tok in self.stop_ids:
                finish = "stop"
                break
            delta, stopped = text.push(tok)
            if delta:
                job.emit(("text", delta))
            if stopped:
                finish = "stop"
                break
            if i + 1 < job.max_new:
                yield
                logits = model(input_ids=torch.tensor([[tok]], device=self.device),
                               **cache_kw(model, cache), use_cache=True).logits[0, -1]
        rest = text.finish()
        if rest:
            job.emit(("text", rest))
        self._count(completion_tokens=out)
        job.emit(("done", finish, {"prompt_tokens": L, "completion_tokens": out,
                                   "total_tokens": L + out, "cached_tokens": n0,
                                   "prefilled_tokens": L - n0}))

    def _prefill(self, job: Job):
        """The prompt into a fresh cache: its cached blocks restored, the rest prefilled one
        chunk per step, the new blocks stored; returns (cache, last logits, cached tokens)."""
        model, g, ids, L = self.model, self.settings.block_tokens, job.ids, len(job.ids)
        keys = block_keys(self.identity, ids)
        reuse = self._reusable(job.policy, L)
        hits = self.documents.lookup(keys[: max(reuse, 0) // g])
        keep = self.documents.keeps
        cache = new_cache(model, job.policy, L + job.max_new, self.settings.page_size, keep)
        n0 = restore(cache, hits, self.device)
        logits = None
        for s0, s1 in self._chunks(n0, L, self._last_forward(job.policy)):
            x = torch.tensor([ids[s0:s1]], device=self.device)
            if s1 < L:
                body(model)(input_ids=x, **cache_kw(model, cache), use_cache=True)
                yield
            else:
                logits = model(input_ids=x, **cache_kw(model, cache), use_cache=True,
                               logits_to_keep=1).logits[0, -1]
        todo = [b for b in range(len(hits), len(keys)) if keep and keys[b] not in self.documents]
        for b, block in zip(todo, capture(cache, n0, todo, g)):
            self.documents.insert(keys[b], block)
        stop_recording(cache)
        return cache, logits, n0

    def run(self, job: Job) -> None:
        """Run ``job`` to the end on this thread (tests, scripts)."""
        with self.running():
            for _ in self.steps(job):
                pass

    def _count(self, **kw) -> None:
        with self._count_lock:
            for k, v in kw.items():
                self.counters[k] += v

    def stats(self) -> dict:
        with self._count_lock:
            counters = dict(self.counters)
        return {**counters, "document_cache": self.documents.stats()}


# -------------------------------------------------------------------- sampling and text
def sample(logits: torch.Tensor, temperature: float, top_p: float,
           gen: torch.Generator) -> int:
    """Greedy at temperature 0; otherwise nucleus sampling from ``softmax(logits / T)`` with
    ``gen`` (on the CPU, so a seed gives the same tokens on any device)."""
    if temperature == 0:
        return int(logits.argmax())
    p = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    if top_p < 1.0:
        sp, order = p.sort(descending=True)
        keep = (sp.cumsum(-1) - sp) < top_p  # the smallest set reaching top_p (>= 1 token)
        p = torch.zeros_like(p).scatter_(-1, order[keep], sp[keep])
    return int(torch.multinomial(p, 1, generator=gen))


class TextStream:
    """Generated tokens as text deltas: holds back an incomplete UTF-8 character and any tail
    that could begin a stop string; ``push`` reports when a stop string has appeared (the text
    ends before it)."""

    def __init__(self, tokenizer, stops: tuple[str, ...] = ()):
        self.tok, self.stops, self.ids, self.sent = tokenizer, stops, [], 0
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.text = ""

    def push(self, token: int) -> tuple[str, bool]:
        self.ids.append(token)
        self.text = self.tok.decode(self.ids, skip_special_tokens=True,
                                    clean_up_tokenization_spaces=False)
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            return self.finish(), True
        end = len(self.text) - self.hold
        while end > self.sent and self.text[end - 1] == "\ufffd":
            end -= 1
        return self._emit(end), False

    def finish(self) -> str:
        return self._emit(len(self.text))

    def _emit(self, end: int) -> str:
        if end <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent:end], end
        return delta


# -------------------------------------------------------------------- scheduling
class QueueFull(RuntimeError):
    pass


class Scheduler:
    """FIFO admission, up to ``max_concurrent`` jobs in flight, their steps interleaved one model
    forward at a time (round robin) on one worker thread that owns the model; at most
    ``max_queue`` jobs wait. A cancelled job (client gone, timeout) is dropped before its next
    step."""

    def __init__(self, engine: Engine, max_concurrent: int = 4, max_queue: int = 64):
        if max_concurrent < 1 or max_queue < 0:
            raise ValueError("max_concurrent must be >= 1 and max_queue >= 0")
        self.engine, self.max_concurrent, self.max_queue = engine, max_concurrent, max_queue
        self._waiting: deque[Job] = deque()
        self._active: list[tuple[Job, object]] = []
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self.counts = {"cancelled": 0, "timed_out": 0, "failed": 0, "rejected": 0,
                       "peak_in_flight": 0}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="longforge-serve", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failed is not None:
            raise self._failed

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.max_queue and len(self._active) >= self.max_concurrent:
                self.counts["rejected"] += 1
                raise QueueFull(f"{len(self._active)} requests are running and "
                                f"{len(self._waiting)} waiting (--max-queue {self.max_queue})")
            self._waiting.append(job)
            self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()

    def stats(self) -> dict:
        with self._cv:
            return {"in_flight": len(self._active), "queued": len(self._waiting),
                    "max_concurrent": self.max_concurrent, "max_queue": self.max_queue,
                    **self.counts}

    def _run(self) -> None:
        try:
            with self.engine.running():
                self._ready.set()
                self._loop()
        except BaseException as exc:  # noqa: BLE001 - reported to start() or logged
            self._failed = exc
            self._ready.set()
            log.exception("the serve worker stopped")
        finally:
            self._drain()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._waiting and not self._active:
                    self._cv.wait()
                if self._stopping:
                    return
                while self._waiting and len(self._active) < self.max_concurrent:
                    job = self._waiting.popleft()
                    if job.cancelled.is_set():
                        self.counts["cancelled"] += 1
                    elif job.deadline is not None and time.monotonic() > job.deadline:
                        self.counts["timed_out"] += 1
                        job.emit(("error", TimeoutError("the request waited in the queue past "
                                                        "the server's time limit")))
                    else:
                        self._active.append((job, self.engine.steps(job)))
                self.counts["peak_in_flight"] = max(self.counts["peak_in_flight"],
                                                    len(self._active))
                active = list(self._active)
            for job, steps in active:  # one forward each, in admission order
                self._step(job, steps)

    def _step(self, job: Job, steps) -> None:
        finished = False
        if job.cancelled.is_set():
            steps.close()
            finished = True
            with self._cv:
                self.counts["cancelled"] += 1
        elif job.deadline is not None and time.monotonic() > job.deadline:
            steps.close()
            finished = True
            with self._cv:
                self.counts["timed_out"] += 1
            job.emit(("error", TimeoutError("the request did not finish within the server's "
                                            "time limit (--request-timeout)")))
        else:
            try:
                next(steps)
            except StopIteration:
                finished = True
            except Exception as exc:  # noqa: BLE001 - the request fails, the server goes on
                log.exception("generation failed")
                finished = True
                with self._cv:
                    self.counts["failed"] += 1
                job.emit(("error", exc))
        if finished:
            with self._cv:
                self._active = [(j, s) for j, s in self._active if j is not job]

    def _drain(self) -> None:
        with self._cv:
            jobs = [j for j, _ in self._active] + list(self._waiting)
            self._active, self._waiting = [], deque()
        for job in jobs:
            job.emit(("error", QueueFull("the server is shutting down")))

