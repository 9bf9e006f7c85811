"""Perplexity of a long text decoded token by token under each policy's budget.

The first ``length`` tokens of the longest haystack document (by default the longest
``python-docs`` document of the sample corpus, ~14K tokens) are prefilled densely once; the next ``tokens`` tokens are then fed one at a time and
scored (next-token NLL) under each method, from a copy of the same prefilled cache.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch

from longforge.models import cache_kw
from longforge.evals.runner import BUDGET_RULE, Method, Results, pin_settings, prefill


@torch.no_grad()
def nll_under(model, cache, policy, ids: list[int]) -> float:
    """Sum of -log p(ids[i+1] | ...) feeding ids[:-1] one token at a time."""
    cache.policy = policy
    total = 0.0
    for cur, nxt in zip(ids[:-1], ids[1:]):
        logits = model(input_ids=torch.tensor([[cur]], device=model.device), **cache_kw(model, cache),
                       use_cache=True).logits[0, -1]
        total -= torch.log_softmax(logits.float(), -1)[nxt].item()
    return total


def run(model, tok, lengths, tokens: int, methods: list[Method], out_dir: Path,
        page_size: int = 16, dense_layers: int | str = "auto", settings: dict | None = None,
        haystack=None) -> Results:
    """``settings``: what else the results depend on (model, text), pinned in ``settings.json``
    with the arguments here (see ``runner.pin_settings``)."""
    from longforge.evals import niah
    from longforge.progress import progress
    from longforge.sparse.hf import sparse_attention
    from longforge.sparse.policies import Dense

    pin_settings(out_dir, {"task": "ppl", "page_size": page_size, "dense_layers": dense_layers,
                           "tokens": tokens, "budgets": BUDGET_RULE, "dtype": str(model.dtype),
                           **(settings or {})})
    res = Results(Path(out_dir) / "results.jsonl")
    with sparse_attention(model, Dense()):
        for L in lengths:
            todo = [m for m in methods if not res.done(_row(m, L))]
            if not todo:
                continue
            bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
            doc = niah.longest_document_ids(tok, haystack or niah.SAMPLE)
            if len(doc) < L + tokens:
                raise ValueError(f"the longest document has {len(doc)} tokens; {L + tokens} needed")
            ids = bos + list(doc[: L + tokens - 1])
            base = prefill(model, ids[: L - 1], len(ids) + 1, any(m.name == "h2o" for m in todo),
                           page_size)
            for m in progress(todo, desc=f"ppl {L}"):
                nll = nll_under(model, copy.deepcopy(base), m.policy(L, page_size, dense_layers),
                                ids[L - 1:])
                n = len(ids) - L
                res.add({**_row(m, L), "budget_tokens": m.tokens(L, page_size), "tokens": n,
                         "nll": nll / n, "ppl": math.exp(nll / n)})
    return res


def _row(m: Method, L: int) -> dict:
    return dict(task="ppl", method=m.name, budget=m.budget, length=L, depth=None, trial=None)
