"""Perplexity of a long text decoded token by token under each policy's budget.

The text is the longest haystack document (``text="longest"``; by default the longest
``python-docs`` document of the sample corpus, ~14K tokens) or the haystack's documents
concatenated in order (``text="stream"``, as the NIAH haystack: the Python reference topics, long
enough for 32K contexts). Its first ``length`` tokens but the last ``WINDOW`` are prefilled
densely once; every method then gets a copy of that cache, the last ``WINDOW`` context tokens as
one more prefill chunk (dense for every policy; SnapKV chooses what it keeps there, at the end of
its prefill) and the next ``tokens`` tokens one at a time, scored (next-token NLL).
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch

from longforge.models import cache_kw
from longforge.evals.runner import BUDGET_RULE, Method, Results, body, pin_settings, prefill

WINDOW = 64  # context tokens each method prefills itself (SnapKV's observation window)
TEXTS = ("longest", "stream")


@torch.no_grad()
def nll_under(model, cache, policy, ids: list[int], context: list[int] = ()) -> float:
    """Sum of -log p(ids[i+1] | ...) feeding ids[:-1] one token at a time, after ``context`` as
    one prefill chunk under ``policy``."""
    cache.policy = policy
    if context:
        body(model)(input_ids=torch.tensor([list(context)], device=model.device),
                    **cache_kw(model, cache), use_cache=True)
    total = 0.0
    for cur, nxt in zip(ids[:-1], ids[1:]):
        logits = model(input_ids=torch.tensor([[cur]], device=model.device), **cache_kw(model, cache),
                       use_cache=True).logits[0, -1]
        total -= torch.log_softmax(logits.float(), -1)[nxt].item()
    return total


def run(model, tok, lengths, tokens: int, methods: list[Method], out_dir: Path,
        page_size: int = 16, dense_layers: int | str = "auto", settings: dict | None = None,
        haystack=None, text: str = "longest") -> Results:
    """``settings``: what else the results depend on (model, text), pinned in ``settings.json``
    with the arguments here (see ``runner.pin_settings``)."""
    from longforge.evals import niah
    from longforge.progress import progress
    from longforge.sparse.hf import sparse_attention
    from longforge.sparse.policies import Dense

    if text not in TEXTS:
        raise ValueError(f"text={text!r}: choose one of {TEXTS}")
    extra = {} if text == "longest" else {"text": text, "window": WINDOW}
    pin_settings(out_dir, {"task": "ppl", "page_size": page_size, "dense_layers": dense_layers,
                           "tokens": tokens, "budgets": BUDGET_RULE, "dtype": str(model.dtype),
                           **extra, **(settings or {})})
    res = Results.folder(out_dir)
    with sparse_attention(model, Dense()):
        for L in lengths:
            todo = [m for m in methods if not res.done(_row(m, L))]
            if not todo:
                continue
            bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
            hay = haystack or niah.SAMPLE
            if text == "stream":
                doc = niah._hay_ids(tok, L + tokens, hay)
            else:
                doc = niah.longest_document_ids(tok, hay)
            if len(doc) < L + tokens:
                raise ValueError(f"the longest document has {len(doc)} tokens; {L + tokens} needed")
            ids = bos + list(doc[: L + tokens - 1])
            w = WINDOW if text == "stream" else 0  # the older runs: no per-method window
            base = prefill(model, ids[: L - 1 - w], len(ids) + 1,
                           any(m.name == "h2o" for m in todo), page_size)
            for m in progress(todo, desc=f"ppl {L}"):
                nll = nll_under(model, copy.deepcopy(base), m.policy(L, page_size, dense_layers),
                                ids[L - 1:], ids[L - 1 - w: L - 1])
                n = len(ids) - L
                res.add({**_row(m, L), "budget_tokens": m.tokens(L, page_size), "tokens": n,
                         "nll": nll / n, "ppl": math.exp(nll / n)})
    return res


def _row(m: Method, L: int) -> dict:
    return dict(task="ppl", method=m.name, budget=m.budget, length=L, depth=None, trial=None)
