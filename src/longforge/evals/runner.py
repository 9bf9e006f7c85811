"""The shared harness: one dense prefill per sample, then one decoder per (policy, budget).

Every method sees the same prompt, the same dense prefill of its first ``len - tail`` tokens
(computed once, copied per method) and decodes the last ``tail`` prompt tokens one at a time,
so decode-step attention (where the policies differ) reads the whole context. Results are
appended to ``results.jsonl`` one cell at a time; a rerun skips the cells already there, and
``settings.json`` pins the settings they were made with, so a rerun with other settings into the
same folder is refused instead of mixing cells (:mod:`longforge.runs`).

Budgets given as a fraction of the context are rounded to a whole number of pages (at least
one), so that every policy attends the same number of tokens and Quest's K = budget / P pages
hold exactly the budget.

A policy that compresses at the end of prefill (SnapKV) runs in two settings: ``snapkv`` gets
the tail as its last prefill chunk, so it chooses with the question in its observation window
(query-aware, as ``generate`` on the whole prompt does); ``snapkv-context`` chooses at the end
of the context, from its last ``window`` tokens, before the tail (question included) is
decoded one token at a time (query-agnostic: kvpress's pipeline, or a document cache that
serves many questions).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from longforge.models import cache_kw
from longforge.progress import progress, say
from longforge.sparse.hf import SparseCache
from longforge.sparse.policies import Policy, make_policy

log = logging.getLogger(__name__)


# A method named <policy>-context compresses at the end of the context, before the question.
CONTEXT = "-context"


def policy_name(method: str) -> str:
    """The policy a method name runs (``snapkv-context`` -> ``snapkv``); checks that the name is
    a policy and that a ``-context`` form is of a policy that compresses at the end of prefill."""
    name = method[: -len(CONTEXT)] if method.endswith(CONTEXT) else method
    policy = make_policy(name)  # validates the name
    if name != method and not policy.compresses_prefill:
        raise ValueError(f"{method!r}: only a policy that compresses at the end of prefill "
                         "(snapkv) has a -context form")
    return name


@dataclass(frozen=True)
class Method:
    name: str                 # a policy name (dense, quest, ...), or snapkv-context
    budget: str = "-"         # "1/8" (of the context length) or "512" (tokens); "-" for dense

    @property
    def label(self) -> str:
        return self.name if self.name == "dense" else f"{self.name}@{self.budget}"

    @property
    def context_only(self) -> bool:
        """It compresses at the end of the context, before the question (query-agnostic)."""
        return self.name.endswith(CONTEXT)

    def tokens(self, length: int, page_size: int = 1) -> int | None:
        """The token budget for a context of ``length`` tokens: a fraction of it, rounded to
        the nearest whole number of ``page_size``-token pages (at least one); or the tokens
        given."""
        if self.name == "dense":
            return None
        if "/" in self.budget:
            num, den = (int(x) for x in self.budget.split("/"))
            return page_size * max(1, (2 * length * num + den * page_size) // (2 * den * page_size))
        return int(self.budget)

    def policy(self, length: int, page_size: int, dense_layers: int | str) -> Policy:
        return make_policy(policy_name(self.name), self.tokens(length, page_size),
                           page_size=page_size, dense_layers=dense_layers)


# How fractional budgets become tokens (recorded in settings.json; see Method.tokens).
BUDGET_RULE = "fraction of the context, rounded to whole pages"


def pin_settings(out_dir: Path, settings: dict) -> None:
    """Pin ``settings`` in ``OUT/settings.json`` (:class:`longforge.runs.RunFolder`): a rerun
    with other settings into a folder that holds results is refused (resume would mix their
    cells), and so is a folder of results whose settings are unknown."""
    from longforge.runs import RunFolder

    out_dir = Path(out_dir)
    RunFolder(out_dir, "eval", legacy=("config.json",)).pin(
        settings, has_results=bool(Results.folder(out_dir).rows))


def parse_methods(methods: str, budgets: str) -> list[Method]:
    """``"dense,quest,h2o"`` x ``"1/8,512"`` -> dense once, every other method at every budget;
    ``name@budget`` (``"tova@1/16"``) is that method at that budget only."""
    out: list[Method] = []
    for item in [m.strip() for m in methods.split(",") if m.strip()]:
        name, _, own = item.partition("@")
        policy_name(name)  # validates the name
        if name == "dense":
            new = [Method("dense")]
        else:
            new = []
            for b in [own] if own else [b.strip() for b in budgets.split(",") if b.strip()]:
                if not re.fullmatch(r"\d+(/\d+)?", b):
                    raise ValueError(f"budget {b!r}: give tokens (512) or a fraction (1/8)")
                new.append(Method(name, b))
        out += [m for m in new if m not in out]
    return out


RESULTS = "results.jsonl"
SHARD_RESULTS = "results.{k}-of-{n}.jsonl"  # shard k of n (run_grid's ``shard``)


def results_name(shard: tuple[int, int] | None = None) -> str:
    """``results.jsonl``, or ``results.<k>-of-<n>.jsonl`` for shard ``k`` of ``n``."""
    return RESULTS if shard is None else SHARD_RESULTS.format(k=shard[0], n=shard[1])


class Results:
    """Append-only JSONL of finished cells; ``done(key)`` for resume. ``also``: other files of
    the same grid (other shards') whose rows count as finished too. A cell found twice (two
    commands that ran into one folder at once) counts once, its first row (files in the order
    given, ``path`` last), with a warning."""

    def __init__(self, path: Path, also=()):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows, self._keys, repeated = [], set(), 0
        for p in dict.fromkeys([*map(Path, also), self.path]):
            if not p.exists():
                continue
            for line in p.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    if self.key(row) in self._keys:
                        repeated += 1
                        continue
                    self.rows.append(row)
                    self._keys.add(self.key(row))
        if repeated:
            log.warning("%s: %d cells appear more than once; each counts once (its first row)",
                        self.path.parent, repeated)

    @classmethod
    def folder(cls, out_dir: Path, shard: tuple[int, int] | None = None) -> "Results":
        """Every row of a grid's folder (``results.jsonl``, then each shard's file by name),
        appending to ``results_name(shard)``."""
        out_dir = Path(out_dir)
        parts = sorted(out_dir.glob(SHARD_RESULTS.format(k="*", n="*")))
        return cls(out_dir / results_name(shard), also=[out_dir / RESULTS, *parts])

    @staticmethod
    def key(row: dict) -> tuple:
        return (row["task"], row["method"], row["budget"], row["length"], row.get("depth"),
                row.get("trial"))

    def done(self, row: dict) -> bool:
        return self.key(row) in self._keys

    def add(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        self.rows.append(row)
        self._keys.add(self.key(row))


def body(model):
    """The decoder stack without the LM head (prefill and prompt tokens need no logits)."""
    return model.base_model


# Prompts are prefilled in chunks of this many tokens. Same attention as one pass (each chunk
# attends to the cache so far and causally within itself), but the mask and score matrices of a
# layer are chunk x context instead of context x context: a 32K prompt in one pass would
# materialise 32K x 32K masks (and H2O's score matrices) per layer type.
PREFILL_CHUNK = 8192
# A sample reuses a prefix bank's tokens in multiples of this many.
BANK_ALIGN = 512


@torch.no_grad()
def prefill(model, ids: list[int], max_len: int, track_scores: bool,
            page_size: int = 16, chunk: int = PREFILL_CHUNK, cache: SparseCache | None = None,
            snapshot_every: int | None = None) -> SparseCache:
    """Dense prefill of ``ids`` into a fresh cache (or after the tokens ``cache`` holds),
    ``chunk`` tokens per forward, the forwards aligned to multiples of ``chunk`` from the first
    token (call inside ``sparse_attention(model, ...)``)."""
    if cache is None:
        cache = SparseCache(model, max_len=max_len, page_size=page_size,
                            track_scores=track_scores, snapshot_every=snapshot_every)
    done = cache.get_seq_length()
    s0 = 0
    # a bar only where the prefill takes more than one forward (a 32K one takes an hour on CPU)
    with progress(total=len(ids), desc="prefill", unit="tok", leave=False,
                  disable=len(ids) <= chunk) as bar:
        while s0 < len(ids):
            end = min(len(ids), (done + s0) // chunk * chunk + chunk - done)
            body(model)(input_ids=torch.tensor([ids[s0:end]], device=model.device),
                        **cache_kw(model, cache), use_cache=True)
            bar.update(end - s0)
            s0 = end
    return cache


@torch.no_grad()
def decode(model, cache: SparseCache, policy: Policy, tail: list[int], max_new: int,
           stop=None, observe_tail: bool = True) -> list[int]:
    """Feed ``tail`` one token at a time under ``policy``, then greedy-decode up to ``max_new``.

    A policy that compresses at the end of prefill (SnapKV) gets ``tail[:-1]`` as one more
    prefill chunk instead, so that its observation window holds the end of the prompt (the
    question), as it would in ``generate``; unless ``observe_tail`` is False (it compressed
    already, at the end of the context)."""
    cache.policy = policy
    dev = model.device
    if policy.compresses_prefill and observe_tail and len(tail) > 1:
        body(model)(input_ids=torch.tensor([tail[:-1]], device=dev), **cache_kw(model, cache),
                    use_cache=True)
    else:
        for t in tail[:-1]:
            body(model)(input_ids=torch.tensor([[t]], device=dev), **cache_kw(model, cache),
                        use_cache=True)
    nxt, out = tail[-1], []
    for _ in range(max_new):
        logits = model(input_ids=torch.tensor([[nxt]], device=dev), **cache_kw(model, cache),
                       use_cache=True).logits[0, -1]
        nxt = int(logits.argmax())
        out.append(nxt)
        if stop is not None and stop(out):
            break
    return out


class PrefixBank:
    """One dense prefill of a needle-free prompt (instruction + haystack), shared by every sample
    whose prompt starts with the same tokens: a sample copies the bank's first tokens (cut to a
    multiple of ``align``) and prefills only the rest (the needle and what follows it). Its
    keys, values, page metadata and (for H2O) prefill attention scores are those a prefill of
    the same tokens gives (cut at a score snapshot). Only for models whose every layer is full
    attention; elsewhere each sample is prefilled whole.

    With ``directory`` the bank is also kept on disk (one safetensors file, written atomically)
    under a key of everything it depends on: the weights' fingerprint, dtype, page size, score
    tracking, ``align``, ``chunk`` and the tokens. A rerun of the same grid (resume) reads it
    instead of prefilling again (a 32K prefill takes tens of minutes on a CPU); a file that
    cannot be read is prefilled again, with a warning."""

    def __init__(self, model, ids: list[int], page_size: int, track_scores: bool,
                 align: int = BANK_ALIGN, chunk: int = PREFILL_CHUNK,
                 directory: Path | None = None):
        self.ids, self.align = torch.tensor(ids), align
        self.path = self.loaded = None
        if directory is None:
            self.cache = self._prefill(model, ids, page_size, track_scores, chunk)
            return
        from filelock import FileLock

        key = _bank_key(model, ids, page_size, track_scores, align, chunk)
        self.path = Path(directory) / f"{key}.safetensors"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # shards of one grid started together: the first prefills, the others wait and read
        with FileLock(f"{self.path}.lock"):
            self.cache = self._read(model, len(ids), page_size, track_scores)
            self.loaded = self.cache is not None
            if not self.loaded:
                self.cache = self._prefill(model, ids, page_size, track_scores, chunk)
                self._write()

    def _prefill(self, model, ids, page_size, track_scores, chunk) -> SparseCache:
        return prefill(model, ids, len(ids), track_scores, page_size, chunk,
                       snapshot_every=self.align if track_scores else None)

    def start(self, ids: list[int], max_len: int) -> tuple[SparseCache | None, int]:
        """``(cache holding the shared prefix, its length)`` for a prompt ``ids``, or (None, 0)."""
        lcp = self.shared(ids)
        if lcp == 0:
            return None, 0
        return self.cache.prefix(lcp, max_len), lcp

    def shared(self, ids: list[int]) -> int:
        """How many of the bank's tokens a prompt ``ids`` can reuse (0 if fewer than ``align``)."""
        return shared_prefix(ids, self.ids.tolist(), self.align)

    # ------------------------------------------------------------------ on disk
    def _metadata(self) -> dict[str, str]:
        return {"longforge_prefix_bank": str(BANK_FORMAT), "key": self.path.stem,
                "tokens": str(len(self.ids))}

    def _write(self) -> None:
        from safetensors.torch import save_file

        tensors = {}
        for i, layer in enumerate(self.cache.layers):
            n = layer.store.length
            tensors[f"{i}.k"] = layer.store.k[:, :, :n]
            tensors[f"{i}.v"] = layer.store.v[:, :, :n]
            for at, scores in layer.snapshots.items():
                tensors[f"{i}.scores@{at}"] = scores
        tensors = {k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            save_file(tensors, str(tmp), metadata=self._metadata())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("prefix bank: could not write %s: %s", self.path, exc)
            tmp.unlink(missing_ok=True)

    def _read(self, model, n: int, page_size: int, track_scores: bool) -> SparseCache | None:
        from safetensors import safe_open

        if not self.path.exists():
            return None
        try:
            with safe_open(str(self.path), framework="pt", device=str(model.device)) as f:
                if f.metadata() != self._metadata():
                    raise ValueError("made for other settings")
                names = set(f.keys())
                cache = SparseCache(model, max_len=n, page_size=page_size,
                                    track_scores=track_scores,
                                    snapshot_every=self.align if track_scores else None)
                for i, layer in enumerate(cache.layers):
                    layer.update(f.get_tensor(f"{i}.k"), f.get_tensor(f"{i}.v"))
                    snaps = sorted(int(k.rsplit("@", 1)[1]) for k in names
                                   if k.startswith(f"{i}.scores@"))
                    layer.snapshots = {at: f.get_tensor(f"{i}.scores@{at}") for at in snaps}
                    if layer.get_seq_length() != n or (track_scores and not snaps):
                        raise ValueError(f"layer {i} holds {layer.get_seq_length()} tokens")
        except Exception as exc:  # a truncated or foreign file: prefill again
            log.warning("prefix bank: %s cannot be used (%s); prefilling again", self.path, exc)
            return None
        log.info("prefix bank: %d tokens read from %s", n, self.path)
        return cache


def shared_prefix(ids: list[int], other: list[int], align: int = BANK_ALIGN) -> int:
    """Length of the common prefix of two prompts, cut to a multiple of ``align``."""
    n = min(len(ids), len(other))
    same = (torch.tensor(ids[:n], dtype=torch.long) == torch.tensor(other[:n], dtype=torch.long))
    return int(same.int().cumprod(0).sum()) // align * align


# Version of the prefix bank file (part of its key and its metadata).
BANK_FORMAT = 1


def _bank_key(model, ids: list[int], page_size: int, track_scores: bool, align: int,
              chunk: int) -> str:
    import hashlib

    import numpy as np

    from longforge.models import weights_fingerprint

    h = hashlib.sha256(json.dumps(
        {"format": BANK_FORMAT, "weights": weights_fingerprint(model), "dtype": str(model.dtype),
         "page_size": page_size, "scores": track_scores, "align": align, "chunk": chunk},
        sort_keys=True).encode())
    h.update(np.asarray(ids, dtype="<i8").tobytes())
    return f"{len(ids)}-{h.hexdigest()[:24]}"


def run_sample(model, ids: list[int], methods: list[Method], tail: int, max_new: int,
               page_size: int, dense_layers: int | str, stop=None, skip=(),
               bank: PrefixBank | None = None) -> dict[Method, list[int]]:
    """One shared dense prefill of ``ids[:-tail]`` (from ``bank`` where the prompt starts like
    it), then every method's decoder on a copy. Methods that are the same policy at the same
    number of tokens (``1/16`` of 32K and ``2048``) are decoded once.

    A ``-context`` method (``snapkv-context``) gets a copy of the cache before the context's
    last ``window`` tokens, prefills those under its policy (which compresses there, without
    the question) and decodes the whole tail one token at a time."""
    if len(ids) <= tail:
        raise ValueError(f"prompt of {len(ids)} tokens is not longer than the tail ({tail})")
    todo = [m for m in methods if m not in skip]
    if not todo:
        return {}
    track = any(m.name == "h2o" for m in todo)
    body_ids, max_len = ids[:-tail], len(ids) + max_new
    policies = {m: m.policy(len(ids), page_size, dense_layers) for m in todo}
    window = max((policies[m].window for m in todo if m.context_only), default=0)
    if window >= len(body_ids):
        raise ValueError(f"a context of {len(body_ids)} tokens leaves nothing before the "
                         f"{window}-token window of a -context method")
    split = len(body_ids) - window
    base, start = bank.start(body_ids[:split], max_len) if bank is not None else (None, 0)
    base = prefill(model, body_ids[start:split], max_len, track, page_size, cache=base)
    before_window = base
    if any(not m.context_only for m in todo) and window:
        before_window = copy.deepcopy(base)
        base = prefill(model, body_ids[split:], max_len, track, page_size, cache=base)
    out, done = {}, {}
    for m in todo:
        key = (m.name, m.tokens(len(ids), page_size))
        if key in done:
            out[m] = done[key]
            continue
        if m.context_only:
            cache = copy.deepcopy(before_window)
            cache.policy = policies[m]
            body(model)(input_ids=torch.tensor([body_ids[split:]], device=model.device),
                        **cache_kw(model, cache), use_cache=True)
            done[key] = decode(model, cache, policies[m], ids[-tail:], max_new, stop,
                               observe_tail=False)
        else:
            done[key] = decode(model, copy.deepcopy(base), policies[m], ids[-tail:], max_new,
                               stop)
        out[m] = done[key]
    return out


def number_done(tokenizer):
    """A stop rule: the output holds a number followed by something else."""
    return numbers_done(tokenizer, 1)


def first_int(text: str) -> int | None:
    m = re.search(r"\d+", text)
    return int(m.group()) if m else None


def run_grid(task: str, model, tokenizer, build, score, lengths, depths, trials: int,
             methods: list[Method], out_dir: Path, tail: int = 64, max_new: int = 12,
             page_size: int = 16, dense_layers: int | str = "auto", seed: int = 0,
             settings: dict | None = None, stop=None, needle_free=None,
             bank_dir: Path | None = None, shard: tuple[int, int] | None = None) -> Results:
    """Every (length, depth, trial) sample through every method; resumable.

    ``build(tokenizer, length, depth, rng_seed) -> (ids, expected)``;
    ``score(output_text, expected) -> bool``. ``settings``: what else the results depend on
    (model, haystack, ...), pinned in ``settings.json`` with the arguments here. ``stop``: the
    greedy decode's stop rule (default: a number followed by something else).
    ``needle_free(tokenizer, length) -> ids``: the prompt every sample starts with up to its
    first needle; given, one :class:`PrefixBank` of the longest length serves every sample
    (models whose every layer is full attention), kept in ``bank_dir`` when given (a resumed
    grid reads it instead of prefilling again), and made only if a sample still to run shares
    at least ``BANK_ALIGN`` tokens with it. ``shard=(k, n)``: only every n-th sample from the
    k-th (0-based) in :func:`sample_order`, appended to ``results.<k>-of-<n>.jsonl``; n jobs
    with k = 0..n-1 run the whole grid between them, into one folder (resume and the report read
    every shard's file).
    """
    from longforge.sparse.hf import sparse_attention
    from longforge.sparse.policies import Dense

    pin_settings(out_dir, {"task": task, "page_size": page_size, "dense_layers": dense_layers,
                           "tail": tail, "max_new": max_new, "seed": seed,
                           "budgets": BUDGET_RULE, "dtype": str(model.dtype), **(settings or {})})
    res = Results.folder(out_dir, shard)
    cells = sample_order(lengths, depths, trials)
    if shard is not None:
        cells = cells[shard[0]::shard[1]]
    stop = stop or number_done(tokenizer)
    todo = [c for c in cells if not all(res.done(_row(task, m, *c)) for m in methods)]
    bank = None
    with sparse_attention(model, Dense()):
        full = all(k == "full_attention" for k in SparseCache.layer_kinds(model))
        if needle_free is not None and todo and full:
            longest = max(c[0] for c in todo)
            free = needle_free(tokenizer, longest)
            # only when a sample still to run can reuse it: one whose first needle is near the
            # start (depth 0) shares no more than the instruction, and a resumed grid with only
            # such samples left would prefill the whole haystack for nothing
            if any(shared_prefix(build(tokenizer, L, d, _seed(seed, task, L, d, t))[0][:-tail],
                                 free) for L, d, t in todo):
                say(f"{task}: one dense prefill of the shared instruction + haystack "
                    f"({longest} tokens) for every sample")
                bank = PrefixBank(model, free, page_size,
                                  track_scores=any(m.name == "h2o" for m in methods),
                                  directory=bank_dir)
                if bank.loaded:
                    say(f"{task}: that prefill was read from {bank.path}")
            else:
                say(f"{task}: no sample left to run can reuse a shared prefill (each has a "
                    f"needle in its first {BANK_ALIGN} tokens); each is prefilled whole")
        for L, d, t in progress(cells, desc=task, unit="sample"):
            rows = {m: _row(task, m, L, d, t) for m in methods}
            skip = {m for m, r in rows.items() if res.done(r)}
            if len(skip) == len(methods):
                continue
            ids, expected = build(tokenizer, L, d, _seed(seed, task, L, d, t))
            outs = run_sample(model, ids, methods, tail, max_new, page_size, dense_layers,
                              stop, skip, bank)
            for m, toks in outs.items():
                text = tokenizer.decode(toks, skip_special_tokens=True)
                res.add({**rows[m], "budget_tokens": m.tokens(len(ids), page_size),
                         "context_tokens": len(ids), "expected": expected, "output": text,
                         "correct": bool(score(text, expected))})
    return res


def sample_order(lengths, depths, trials: int) -> list[tuple[int, float, int]]:
    """The (length, depth, trial) samples in the order a grid runs them: length by length, and
    within a length every depth of trial 0, then every depth of trial 1, ...: a run stopped
    part way has covered the depths evenly, so its partial report is not biased by depth."""
    return [(L, d, t) for L in lengths for t in range(trials) for d in depths]


def _row(task: str, m: Method, length: int, depth: float, trial: int) -> dict:
    return dict(task=task, method=m.name, budget=m.budget, length=length, depth=depth,
                trial=trial)


def numbers_done(tokenizer, n: int, digits: int = 1):
    """A stop rule: the output holds ``n`` numbers of at least ``digits`` digits, the last
    followed by something else. ``digits`` keeps a list's markers ("1.", "2.") from counting as
    answers: counted, they stop a four-value answer after its second value."""
    pattern = re.compile(rf"\d{{{digits},}}\D")

    def stop(out: list[int]) -> bool:
        return len(pattern.findall(tokenizer.decode(out, skip_special_tokens=True))) >= n
    return stop


def _seed(seed: int, task: str, length: int, depth: float, trial: int) -> int:
    import zlib

    return zlib.crc32(f"{seed}/{task}/{length}/{depth}/{trial}".encode())
