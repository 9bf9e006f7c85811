"""KV-cache policies for decode steps, all run by the same harness (``longforge.sparse.hf``).

A policy decides, for one decode step of one full-attention layer, which cached tokens the
query attends to; the softmax over the kept tokens is exact. Every policy sees the same
page-contiguous cache (``PagedKV``), the same dense prefill and the same ``token_budget``
(tokens attended per KV head per step); the layers that ``dense_layers`` names stay dense for
all of them (:func:`dense_layer_ids`). When a row's context fits the budget, every policy is
dense.

* ``Dense``: every token (the baseline; ``ops.dense_decode``).
* ``Quest``: per step, the top ``token_budget / page_size`` pages by criticality, chosen per KV
  group (max over the group's query heads), the last page always kept (``ops.quest_decode``).
* ``QuestRank`` (``"quest-rank"``): per-group selection of K pages, but the group's heads take
  their best pages in turn instead of ranking pages by the max over heads (same bytes read).
* ``QuestPerHead`` (``"quest-head"``): Quest with the pages chosen per query head instead of
  per KV group (``ops.quest_decode_per_head``): the GQA ablation; a group reads the union of
  its heads' pages, up to G times as many.
* ``StreamingLLM``: the first ``sinks`` tokens of each row plus the most recent
  ``token_budget - sinks`` tokens. Keys keep the rotary positions they were cached with (no
  re-indexing of positions inside the window, as in kvpress); evicted tokens are never read.
* ``H2O``: ``token_budget // 2`` most recent tokens plus the heavy hitters by attention
  accumulated (summed over the KV group's query heads) since prefill; eviction is permanent,
  as in the paper: a token dropped once never returns. Needs the prefill's attention scores,
  so its cache is created with ``track_scores=True``.

StreamingLLM and H2O here measure accuracy, not speed: they mask a dense read of the cache.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from longforge.sparse.ops import dense_decode, quest_decode, quest_decode_per_head


DENSE_AUTO = "auto"


def parse_dense_layers(spec: int | str) -> tuple[str, int]:
    """``dense_layers`` as (rule, N): ``N`` or ``"N"`` (the first N layers by index, the paper's
    counting), ``"full:N"`` (the first N full-attention layers), ``"auto"`` (see
    :func:`dense_layer_ids`)."""
    if isinstance(spec, bool):
        raise ValueError(f"dense_layers={spec!r}: give N, 'full:N' or 'auto'")
    if isinstance(spec, int):
        rule, n = "index", spec
    elif spec == DENSE_AUTO:
        return "auto", 2
    elif isinstance(spec, str) and spec.isdigit():
        rule, n = "index", int(spec)
    elif isinstance(spec, str) and spec.startswith("full:") and spec[5:].isdigit():
        rule, n = "full", int(spec[5:])
    else:
        raise ValueError(f"dense_layers={spec!r}: give N (the first N layers by index), 'full:N' "
                         "(the first N full-attention layers) or 'auto'")
    if n < 0:
        raise ValueError(f"dense_layers must be >= 0, got {n}")
    return rule, n


def normalize_dense_layers(spec: int | str) -> int | str:
    """``spec`` checked, with ``"N"`` as the int ``N`` (how settings files record it)."""
    rule, n = parse_dense_layers(spec)
    return n if rule == "index" else spec


def dense_layer_ids(spec: int | str, layer_types) -> frozenset[int]:
    """The layers that decode densely under ``dense_layers=spec`` on a model whose layers have
    ``layer_types`` (``"full_attention"``, ``"sliding_attention"``, ...; None: all full).

    ``"auto"`` (the default) keeps the paper's first two layers dense and, on hybrid models whose
    first layers are sliding-window layers, also the first full-attention layer: on Llama and Qwen2
    (every layer global) that is layers 0 and 1; on Gemma 3 (five sliding layers, then a global
    one) it is layer 5, the first layer that sees the whole context (sliding layers never run a
    sparse policy anyway). Counting by index alone would keep no global layer of Gemma 3 dense.
    """
    rule, n = parse_dense_layers(spec)
    full = [i for i, t in enumerate(layer_types or ()) if t == "full_attention"]
    if layer_types is None:
        return frozenset(range(n))
    if rule == "index":
        return frozenset(range(min(n, len(layer_types))))
    if rule == "full":
        return frozenset(full[:n])
    return frozenset(range(min(2, len(layer_types)))) | frozenset(full[:1])


@dataclass
class Policy:
    token_budget: int | None = None
    page_size: int = 16
    dense_layers: int | str = DENSE_AUTO
    name = "policy"
    needs_scores = False

    def __post_init__(self):
        if self.token_budget is not None and self.token_budget < 1:
            raise ValueError(f"token_budget must be >= 1, got {self.token_budget}")
        if self.page_size < 1:
            raise ValueError("page_size must be >= 1")
        parse_dense_layers(self.dense_layers)

    def is_dense_layer(self, layer_idx: int, layer_types=None) -> bool:
        """``layer_idx`` decodes densely (see :func:`dense_layer_ids`)."""
        return layer_idx in dense_layer_ids(self.dense_layers, layer_types)

    def label(self) -> str:
        return self.name if self.token_budget is None else f"{self.name}@{self.token_budget}"

    def decode(self, layer_idx: int, layer, q: torch.Tensor, key_mask: torch.Tensor | None,
               scale: float, softcap: float | None, layer_types=None) -> torch.Tensor:
        """Attention output ``[B, H_q, D]`` of the decode query ``q [B, H_q, D]``."""
        if self.token_budget is None or self.is_dense_layer(layer_idx, layer_types):
            return dense_decode(q, layer.store, scale, key_mask, softcap)
        return self.sparse_decode(layer, q, key_mask, scale, softcap)

    def sparse_decode(self, layer, q, key_mask, scale, softcap):  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class Dense(Policy):
    name = "dense"

    def __post_init__(self):
        super().__post_init__()
        self.token_budget = None


@dataclass
class Quest(Policy):
    name = "quest"

    def sparse_decode(self, layer, q, key_mask, scale, softcap):
        if layer.store.page_size != self.page_size:
            raise ValueError(f"cache pages have {layer.store.page_size} tokens, policy wants "
                             f"{self.page_size}")
        return self._decode(q, layer.store, self.token_budget, scale, key_mask, softcap)

    @staticmethod
    def _decode(*args):
        return quest_decode(*args)


@dataclass
class QuestRank(Quest):
    name = "quest-rank"

    @staticmethod
    def _decode(*args):
        return quest_decode(*args, combine="rank")


@dataclass
class QuestPerHead(Quest):
    name = "quest-head"

    @staticmethod
    def _decode(*args):
        return quest_decode_per_head(*args)


@dataclass
class StreamingLLM(Policy):
    sinks: int = 4
    name = "streaming"

    def kept(self, length: int, key_mask: torch.Tensor) -> torch.Tensor:
        """Bool ``[B, L]``: the first ``sinks`` real tokens of each row and the recent window."""
        sinks = min(self.sinks, self.token_budget)
        rank = key_mask.long().cumsum(-1)  # 1-based rank among the row's real tokens
        pos = torch.arange(length, device=key_mask.device)
        return key_mask & ((rank <= sinks) | (pos >= length - (self.token_budget - sinks)))

    def sparse_decode(self, layer, q, key_mask, scale, softcap):
        store = layer.store
        key_mask = _full_mask(key_mask, q.shape[0], store.length, q.device)
        return _masked_decode(q, store, self.kept(store.length, key_mask)[:, None], scale,
                              softcap)[0]


@dataclass
class H2O(Policy):
    name = "h2o"
    needs_scores = True

    def kept(self, layer, key_mask: torch.Tensor) -> torch.Tensor:
        """Bool ``[B, H_kv, L]``: recent window plus heavy hitters among tokens not yet evicted.

        Updates ``layer.state['h2o_kept']`` (the evictions are permanent)."""
        if layer.scores is None:
            raise RuntimeError("H2O needs the attention scores of prefill: create the cache with "
                               "track_scores=True (SparseCache does when its policy is H2O)")
        L = layer.store.length
        recent_n = max(1, self.token_budget // 2)
        heavy_n = self.token_budget - recent_n
        prev = layer.state.get("h2o_kept")
        alive = key_mask[:, None, :].expand(-1, layer.store.k.shape[1], -1).clone()
        if prev is not None:  # tokens evicted earlier stay evicted; the newest tokens are alive
            alive[..., : prev.shape[-1]] &= prev
        pos = torch.arange(L, device=key_mask.device)
        recent = pos >= L - recent_n
        cand = alive & ~recent
        kept = alive & recent
        if heavy_n > 0:
            s = layer.scores[..., :L].masked_fill(~cand, float("-inf"))
            top = s.topk(min(heavy_n, L), dim=-1)
            pick = torch.zeros_like(cand).scatter_(-1, top.indices, top.values > float("-inf"))
            kept |= pick
        layer.state["h2o_kept"] = kept
        return kept

    def sparse_decode(self, layer, q, key_mask, scale, softcap):
        store = layer.store
        key_mask = _full_mask(key_mask, q.shape[0], store.length, q.device)
        out, probs = _masked_decode(q, store, self.kept(layer, key_mask), scale, softcap)
        layer.scores[..., : store.length] += probs.sum(dim=2)
        return out


POLICIES = {"dense": Dense, "quest": Quest, "quest-rank": QuestRank, "quest-head": QuestPerHead,
            "streaming": StreamingLLM, "h2o": H2O}


def make_policy(name: str, token_budget: int | None = None, **kwargs) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}")
    return POLICIES[name](token_budget=token_budget, **kwargs)


def _full_mask(key_mask, b, length, device):
    if key_mask is None:
        return torch.ones(b, length, dtype=torch.bool, device=device)
    return key_mask[:, :length].bool()


def _masked_decode(q, store, valid, scale, softcap):
    """Exact attention over the tokens with ``valid [B, H_kv or 1, L]``; returns (out, probs)."""
    b, hq, d = q.shape
    hkv = store.k.shape[1]
    qg = q.view(b, hkv, hq // hkv, d)
    s = torch.matmul(qg, store.keys().transpose(-1, -2)) * scale
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    s = s.masked_fill(~valid[:, :, None, :], float("-inf"))
    probs = torch.softmax(s.float(), dim=-1)
    out = torch.matmul(probs.to(store.v.dtype), store.values())
    return out.reshape(b, hq, d), probs
