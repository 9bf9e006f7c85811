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
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from longforge.models import cache_kw
from longforge.sparse.hf import SparseCache
from longforge.sparse.policies import Policy, make_policy


@dataclass(frozen=True)
class Method:
    name: str                 # dense | quest | streaming | h2o
    budget: str = "-"         # "1/8" (of the context length) or "512" (tokens); "-" for dense

    @property
    def label(self) -> str:
        return self.name if self.name == "dense" else f"{self.name}@{self.budget}"

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
        return make_policy(self.name, self.tokens(length, page_size), page_size=page_size,
                           dense_layers=dense_layers)


# How fractional budgets become tokens (recorded in settings.json; see Method.tokens).
BUDGET_RULE = "fraction of the context, rounded to whole pages"


def pin_settings(out_dir: Path, settings: dict) -> None:
    """Pin ``settings`` in ``OUT/settings.json`` (:class:`longforge.runs.RunFolder`): a rerun
    with other settings into a folder that holds results is refused (resume would mix their
    cells), and so is a folder of results whose settings are unknown."""
    from longforge.runs import RunFolder

    out_dir = Path(out_dir)
    RunFolder(out_dir, "eval", legacy=("config.json",)).pin(
        settings, has_results=bool(Results(out_dir / "results.jsonl").rows))


def parse_methods(methods: str, budgets: str) -> list[Method]:
    """``"dense,quest,h2o"`` x ``"1/8,512"`` -> dense once, every other method at every budget."""
    out = []
    for name in [m.strip() for m in methods.split(",") if m.strip()]:
        make_policy(name)  # validates the name
        if name == "dense":
            out.append(Method("dense"))
        else:
            for b in [b.strip() for b in budgets.split(",") if b.strip()]:
                if not re.fullmatch(r"\d+(/\d+)?", b):
                    raise ValueError(f"budget {b!r}: give tokens (512) or a fraction (1/8)")
                out.append(Method(name, b))
    return out


class Results:
    """Append-only JSONL of finished cells; ``done(key)`` for resume."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    self.rows.append(json.loads(line))
        self._keys = {self.key(r) for r in self.rows}

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


@torch.no_grad()
def prefill(model, ids: list[int], max_len: int, track_scores: bool,
            page_size: int = 16, chunk: int = PREFILL_CHUNK) -> SparseCache:
    """Dense prefill of ``ids`` into a fresh cache, ``chunk`` tokens per forward (call inside
    ``sparse_attention(model, ...)``)."""
    cache = SparseCache(model, max_len=max_len, page_size=page_size, track_scores=track_scores)
    for s0 in range(0, len(ids), chunk):
        body(model)(input_ids=torch.tensor([ids[s0:s0 + chunk]], device=model.device),
                    **cache_kw(model, cache), use_cache=True)
    return cache


@torch.no_grad()
def decode(model, cache: SparseCache, policy: Policy, tail: list[int], max_new: int,
           stop=None) -> list[int]:
    """Feed ``tail`` one token at a time under ``policy``, then greedy-decode up to ``max_new``.

    A policy that compresses at the end of prefill (SnapKV) gets ``tail[:-1]`` as one more
    prefill chunk instead, so that its observation window holds the end of the prompt (the
    question), as it would in ``generate``."""
    cache.policy = policy
    dev = model.device
    if policy.compresses_prefill and len(tail) > 1:
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


def run_sample(model, ids: list[int], methods: list[Method], tail: int, max_new: int,
               page_size: int, dense_layers: int | str, stop=None, skip=()) -> dict[Method, list[int]]:
    """One shared dense prefill of ``ids[:-tail]``, then every method's decoder on a copy."""
    if len(ids) <= tail:
        raise ValueError(f"prompt of {len(ids)} tokens is not longer than the tail ({tail})")
    todo = [m for m in methods if m not in skip]
    if not todo:
        return {}
    base = prefill(model, ids[:-tail], len(ids) + max_new,
                   track_scores=any(m.name == "h2o" for m in todo), page_size=page_size)
    out = {}
    for m in todo:
        cache = copy.deepcopy(base)
        out[m] = decode(model, cache, m.policy(len(ids), page_size, dense_layers), ids[-tail:],
                        max_new, stop)
    return out


def number_done(tokenizer):
    """A stop rule: the output holds a number followed by something else."""
    def stop(out: list[int]) -> bool:
        return re.search(r"\d+\D", tokenizer.decode(out, skip_special_tokens=True)) is not None
    return stop


def first_int(text: str) -> int | None:
    m = re.search(r"\d+", text)
    return int(m.group()) if m else None


def run_grid(task: str, model, tokenizer, build, score, lengths, depths, trials: int,
             methods: list[Method], out_dir: Path, tail: int = 64, max_new: int = 12,
             page_size: int = 16, dense_layers: int | str = "auto", seed: int = 0,
             settings: dict | None = None) -> Results:
    """Every (length, depth, trial) sample through every method; resumable.

    ``build(tokenizer, length, depth, rng_seed) -> (ids, expected)``;
    ``score(output_text, expected) -> bool``. ``settings``: what else the results depend on
    (model, haystack, ...), pinned in ``settings.json`` with the arguments here.
    """
    from longforge.progress import progress
    from longforge.sparse.hf import sparse_attention
    from longforge.sparse.policies import Dense

    pin_settings(out_dir, {"task": task, "page_size": page_size, "dense_layers": dense_layers,
                           "tail": tail, "max_new": max_new, "seed": seed,
                           "budgets": BUDGET_RULE, "dtype": str(model.dtype), **(settings or {})})
    res = Results(Path(out_dir) / "results.jsonl")
    cells = [(L, d, t) for L in lengths for d in depths for t in range(trials)]
    stop = number_done(tokenizer)
    with sparse_attention(model, Dense()):
        for L, d, t in progress(cells, desc=task, unit="sample"):
            rows = {m: dict(task=task, method=m.name, budget=m.budget, length=L, depth=d,
                            trial=t) for m in methods}
            skip = {m for m, r in rows.items() if res.done(r)}
            if len(skip) == len(methods):
                continue
            ids, expected = build(tokenizer, L, d, _seed(seed, task, L, d, t))
            outs = run_sample(model, ids, methods, tail, max_new, page_size, dense_layers,
                              stop, skip)
            for m, toks in outs.items():
                text = tokenizer.decode(toks, skip_special_tokens=True)
                res.add({**rows[m], "budget_tokens": m.tokens(len(ids), page_size),
                         "context_tokens": len(ids), "expected": expected, "output": text,
                         "correct": bool(score(text, expected))})
    return res


def _seed(seed: int, task: str, length: int, depth: float, trial: int) -> int:
    import zlib

    return zlib.crc32(f"{seed}/{task}/{length}/{depth}/{trial}".encode())
