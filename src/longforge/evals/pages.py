"""Where Quest reads: for NIAH prompts, whether each needle's value lies in the pages Quest
selects, step by step, and how much exact attention each step's query would give it.

A Quest answer that dense gets right can go wrong in two ways: the pages holding the asked-for
value were not among the K pages a layer read (the criticality bound ranked them too low), or
they were read and the answer still came out otherwise (a distractor read as well, or a layer
that did not read the value steering the answer). ``longforge eval pages`` tells these apart.

Each sample is the prompt the NIAH grid builds for that length, depth and trial (the same seed,
so the same haystack, needles and question). One dense prefill of the context; then each method
decodes the question and its answer exactly as ``eval niah`` does (tail fed token by token,
greedy, the same stop rule), under a :class:`PageTrace` that records, at every step, in every
layer and KV group, for every needle ``n``:

* ``kept[n]``: the share of the group's query heads whose pages hold every token of the needle's
  value (0 or 1 when the group chooses its pages together, the default; null in the layers that
  decode densely, which read everything);
* ``mass[n]``: the share of the exact softmax attention of the step's query (the mean over the
  group's heads, over the whole cache) that falls on the value's tokens: where the query would
  look without a budget;

and the same two for each needle's key (its words before the value, which the question's key
matches), recorded after the values (``kept[N + n]``, ``mass[N + n]`` of N needles).

Rows go to ``pages.jsonl`` (one per method and sample, resumable). ``pages.md`` and
``pages.json`` summarise three phases (:func:`phases`: the question, the step that chooses the
answer's first digit, the answer) by the share of the value's exact attention that Quest's
pages held (``kept`` weighed by ``mass``: a layer that barely looks at the value counts little)
and by the mean ``mass``. Each row also holds, for the step that chose the answer's first digit,
the log-probability it gave each needle's first value token (``first_digit_logprobs``): how
close the choice between the needles came.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from longforge.corpus import atomic_write_json, atomic_write_text
from longforge.evals import niah
from longforge.evals.runner import (Method, Results, _row, _seed, decode, pin_settings,
                                    prefill, sample_order)
from longforge.progress import progress
from longforge.sparse.attention import probabilities
from longforge.sparse.backends import get_backend
from longforge.sparse.hf import sparse_attention
from longforge.sparse.policies import Dense, Quest
from longforge.sparse.selection import grouped

RESULTS = "pages.jsonl"


@dataclass
class PageTrace(Quest):
    """Quest (or, with ``token_budget=None``, dense) decoding that records, per forward and
    layer, ``kept`` and ``mass`` of the token ``spans`` (``[a, b)`` each) per KV group.
    Batch of one."""

    spans: tuple[tuple[int, int], ...] = ()
    records: list = field(default_factory=list, repr=False)

    def decode(self, layer_idx, layer, q, key_mask, scale, softcap, layer_types=None):
        if q.shape[0] != 1:
            raise ValueError("PageTrace records a batch of one")
        store = layer.store
        sparse = self.token_budget is not None and not self.is_dense_layer(layer_idx, layer_types)
        chosen = (get_backend(self.backend, q.device).select(q, store, self.token_budget,
                                                             key_mask, self.selection)
                  if sparse else None)
        qg = grouped(q, store.k.shape[1])  # [1, H_kv, G, D]
        mask = None if key_mask is None else key_mask[:, None, None, : store.length].bool()
        probs = probabilities(qg, store.keys(), mask, scale, softcap)[0]  # [H_kv, G, L]
        mass = torch.stack([probs[..., a:b].sum(-1).mean(-1) for a, b in self.spans], -1)
        kept = None
        if sparse:
            kept = (torch.stack([self._holds(chosen[0], a, b, store) for a, b in self.spans], -1)
                    if chosen is not None else torch.ones_like(mass))  # context fits: dense
        self.records.append((layer_idx, None if kept is None else kept.tolist(), mass.tolist()))
        return super().decode(layer_idx, layer, q, key_mask, scale, softcap, layer_types)

    def _holds(self, pages: torch.Tensor, a: int, b: int, store) -> torch.Tensor:
        """``[H_kv]``: the share of each group's page sets (one per group, or one per head) that
        hold every page of the tokens ``[a, b)``."""
        P = store.page_size
        want = torch.arange(a // P, (b - 1) // P + 1, device=pages.device)
        sets = pages if pages.dim() == 3 else pages[:, None]  # [H_kv, S, K]
        has = (sets[..., None] == want).any(-2).all(-1)  # [H_kv, S]
        return has.float().mean(-1)

    def steps(self, n_layers: int) -> list[list[tuple]]:
        """The records grouped by forward (each forward calls every layer once, in order)."""
        if len(self.records) % n_layers:
            raise RuntimeError(f"{len(self.records)} records for {n_layers} layers")
        return [self.records[i:i + n_layers] for i in range(0, len(self.records), n_layers)]


def traceable(policy) -> bool:
    """Dense and Quest (any selection) choose pages a :class:`PageTrace` can record."""
    return isinstance(policy, (Quest, Dense))


def trace_policy(policy, spans) -> PageTrace:
    """``policy`` (a :class:`Quest` or :class:`Dense`) as a :class:`PageTrace`."""
    if not traceable(policy):
        raise ValueError(f"eval pages traces dense and Quest; {policy.name} has no pages")
    own = {f.name: getattr(policy, f.name) for f in fields(policy) if f.init}
    if isinstance(policy, Dense):
        own["token_budget"] = None
    return PageTrace(**own, spans=tuple(spans))


def run(model, tokenizer, task: str, variant: str, needles: int, haystack, lengths, depths,
        trials: int, methods, out_dir: Path, tail: int, max_new: int, page_size: int,
        dense_layers, seed: int, stop, score, settings: dict | None = None) -> list[dict]:
    """Trace every (length, depth, trial) sample under every method; resumable."""
    pin_settings(out_dir, {"task": f"{task}-pages", "page_size": page_size,
                           "dense_layers": dense_layers, "tail": tail, "max_new": max_new,
                           "seed": seed, "dtype": str(model.dtype), **(settings or {})})
    res = Results(Path(out_dir) / RESULTS)
    n_layers = model.config.num_hidden_layers
    with sparse_attention(model, Dense()):
        for L, d, t in progress(sample_order(lengths, depths, trials), desc=f"{task} pages",
                                unit="sample"):
            rows = {m: _row(task, m, L, d, t) for m in methods}
            todo = [m for m in methods if not res.done(rows[m])]
            if not todo:
                continue
            ids, expected, where = niah.layout(tokenizer, L, d, _seed(seed, task, L, d, t),
                                               haystack, variant, needles)
            spans = [*((n.value_start, n.value_end) for n in where),
                     *((n.start, n.value_start) for n in where)]  # values, then keys
            base = prefill(model, ids[:-tail], len(ids) + max_new, False, page_size)
            for m in todo:
                policy = trace_policy(m.policy(len(ids), page_size, dense_layers), spans)
                logp: list[torch.Tensor] = []
                with _log_probs(model, logp):
                    out = decode(model, copy.deepcopy(base), policy, ids[-tail:], max_new, stop)
                text = tokenizer.decode(out, skip_special_tokens=True)
                emits = [tokenizer.decode([tok]) for tok in out]
                steps = [{"emits": emits[i - tail + 1] if i >= tail - 1 else None,
                          "layers": [[li, _round(k), _round(ms)] for li, k, ms in step]}
                         for i, step in enumerate(policy.steps(n_layers))]
                res.add({**rows[m], "budget_tokens": m.tokens(len(ids), page_size),
                         "context_tokens": len(ids), "expected": expected, "output": text,
                         "correct": bool(score(text, expected)),
                         "needles": [asdict(n) for n in where], "steps": steps,
                         "first_digit_logprobs": first_digit_logprobs(
                             emits, logp, [ids[n.value_start] for n in where])})
    return res.rows


def _has_digit(text: str) -> bool:
    return any(c.isdigit() for c in text)


def first_digit_logprobs(emits: list[str], logp: list[torch.Tensor],
                         tokens: list[int]) -> list[float] | None:
    """At the answer step that chose its first digit (``logp[j]`` chose the token whose text
    is ``emits[j]``), the log-probability of each of ``tokens`` (the needles' first value
    tokens): how close the choice between the needles came. None when the answer holds no
    digit."""
    first = next((j for j, text in enumerate(emits) if _has_digit(text)), None)
    return None if first is None else [round(float(logp[first][t]), 3) for t in tokens]


@contextmanager
def _log_probs(model, into: list):
    """Append each forward's last-position log-probabilities (the LM head's) to ``into``."""
    def hook(module, args, output):
        into.append(torch.log_softmax(output[0, -1].float(), -1))

    handle = model.get_output_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _round(x):
    if x is None:
        return None
    if isinstance(x, list):
        return [_round(v) for v in x]
    return round(x, 4)


PHASES = ("question", "first digit", "answer")


def phases(row: dict) -> dict[str, list[dict]]:
    """The steps of a row by phase: ``question`` (the question's tokens, before the step that
    emits the first answer token), ``first digit`` (the step that emits the answer's first digit:
    where the value is chosen) and ``answer`` (from that step to the one that emits the last
    digit; every answer step when the answer holds no digit)."""
    question = [s for s in row["steps"] if s["emits"] is None]
    emitted = [s for s in row["steps"] if s["emits"] is not None]
    digits = [i for i, s in enumerate(emitted) if _has_digit(s["emits"])]
    answer = emitted[digits[0]:digits[-1] + 1] if digits else emitted
    return {"question": question, "first digit": answer[:1], "answer": answer}


def measure(steps: list[dict], spans) -> dict:
    """Per span (indices ``spans`` of the recorded ones) over ``steps``: ``kept``, the share of
    the exact attention the span gets in the sparse layers (summed over their groups and the
    steps) that lies in pages Quest read (None where no layer is sparse: dense); ``mass``, the
    mean share of a group's attention that the span gets, over every layer's groups."""
    spans = list(spans)
    n = len(spans)
    num, den, total, count = [0.0] * n, [0.0] * n, [0.0] * n, 0
    sparse = False
    for s in steps:
        for _, k, ms in s["layers"]:
            for group, m in enumerate(ms):
                count += 1
                for j, i in enumerate(spans):
                    total[j] += m[i]
                    if k is not None:
                        num[j] += m[i] * k[group][i]
                        den[j] += m[i]
            sparse |= k is not None
    return {"kept": [a / b if b else None for a, b in zip(num, den)] if sparse else [None] * n,
            "mass": [t / count if count else None for t in total]}


def summarize(row: dict) -> dict:
    """:func:`measure` of each phase (:func:`phases`) for the needles' values and for their
    keys (the needle's words before the value), and which needle the answer holds."""
    n = len(row["needles"])
    return {"answered": answered(row), "first_digit_logprobs": row["first_digit_logprobs"],
            **{p: {"value": measure(steps, range(n)), "key": measure(steps, range(n, 2 * n))}
               for p, steps in phases(row).items()}}


def answered(row: dict) -> int | None:
    """Index of the needle whose value the answer holds (None: none of them, or several)."""
    hits = [i for i, n in enumerate(row["needles"]) if niah.holds(row["output"], n["value"])]
    return hits[0] if len(hits) == 1 else None


def markdown(rows: list[dict]) -> str:
    out = ["# Where Quest reads: the needles in the pages it selects", "",
           "Per sample, the needles in prompt order (the asked-for one marked *, each with "
           "where it starts as a share of the prompt). Per method and phase (the question's "
           "steps, the step that chose the answer's first digit, the steps that wrote the "
           "answer), for each needle's value (v) and its key, the words before the value (k): "
           "**kept**, the share of the exact attention the tokens get in the sparse layers "
           "that lies in the pages Quest read (dense: -), and **mass**, the mean share of a KV "
           "group's exact attention (every layer, mean over its heads) that the step's query "
           "gives them. Cells: v kept / mass, k kept / mass; at the first digit also the "
           "log-probability the step gave the needle's first value token.", ""]
    samples: dict[tuple, list[dict]] = {}
    for r in rows:
        samples.setdefault((r["length"], r["depth"], r["trial"]), []).append(r)
    for (L, d, t), rs in samples.items():
        needles = rs[0]["needles"]
        out += [f"## {rs[0]['task']}, {L} tokens, depth {d}, trial {t}", ""]
        names = [f"{'*' if n['target'] else ''}{n['value']} @ {n['start'] / L:.2f}"
                 for n in needles]
        out += ["| method | answer | right | phase | "
                + " | ".join(names) + " |",
                "|---" * (4 + len(names)) + "|"]
        for r in rs:
            s = summarize(r)
            label = Method(r["method"], r["budget"]).label
            answer = r["output"].strip().replace("|", "/").replace("\n", " ")
            for i, phase in enumerate(PHASES):
                cells = [f"v {_cell(s[phase]['value'], j)}, k {_cell(s[phase]['key'], j)}"
                         for j in range(len(needles))]
                if phase == "first digit" and s["first_digit_logprobs"] is not None:
                    cells = [f"{c}; log p {lp:.2f}"
                             for c, lp in zip(cells, s["first_digit_logprobs"])]
                head = (f"| {label} | {answer} | {'yes' if r['correct'] else 'no'} |" if i == 0
                        else "| | | |")
                out.append(f"{head} {phase} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _cell(m: dict, j: int) -> str:
    kept = "-" if m["kept"][j] is None else f"{100 * m['kept'][j]:.0f}%"
    return f"{kept} / {100 * m['mass'][j]:.1f}%"


def write_report(out_dir: Path) -> str:
    """``pages.md`` and ``pages.json`` (the summary of every row) from ``pages.jsonl``."""
    rows = Results(Path(out_dir) / RESULTS).rows
    if not rows:
        raise FileNotFoundError(f"no results in {out_dir} ({RESULTS})")
    text = markdown(rows)
    atomic_write_json(Path(out_dir) / "pages.json",
                      [{k: r[k] for k in ("task", "method", "budget", "length", "depth", "trial",
                                          "output", "correct")} | summarize(r) for r in rows])
    atomic_write_text(Path(out_dir) / "pages.md", text)
    return text
