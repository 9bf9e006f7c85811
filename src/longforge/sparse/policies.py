"""KV-cache policies: small dataclasses, each usable as ``with policy(model): model.generate(...)``.

A policy decides, for one decode step of one full-attention layer, which cached tokens the query
attends to; the softmax over the kept tokens is exact. Every policy sees the same page-contiguous
cache (:class:`~longforge.sparse.store.PagedKV`), the same dense prefill and the same
``token_budget`` (tokens attended per KV head per step); the layers that ``dense_layers`` names
stay dense for all of them (:func:`dense_layer_ids`). When a row's context fits the budget,
every policy is dense.

* :class:`Dense`: every token (the baseline).
* :class:`Quest`: per step, the top ``token_budget / page_size`` pages by criticality, the last
  page always kept; ``selection`` says how a GQA group's heads choose (group / rank / head, see
  :mod:`longforge.sparse.selection`). ``backend`` picks the implementation (reference, torch, c,
  triton; default: the fastest that works here, :mod:`longforge.sparse.backends`).
* :class:`StreamingLLM`: the first ``sinks`` tokens of each row plus the most recent
  ``token_budget - sinks`` tokens. Keys keep the rotary positions they were cached with (no
  re-indexing of positions inside the window, as in kvpress); evicted tokens are never read.
* :class:`H2O`: ``token_budget // 2`` most recent tokens plus the heavy hitters by attention
  accumulated (summed over the KV group's query heads) since prefill; eviction is permanent:
  a token dropped once never returns. Its cache tracks the prefill's attention scores.
* :class:`TOVA` (Oren et al. 2024): a fixed-size cache; at every decode step, once the layer
  holds more than ``token_budget`` tokens, the tokens with the lowest attention from the current
  query (averaged over all the layer's heads: one choice per layer) are evicted, permanently,
  until it holds ``token_budget``.
* :class:`SnapKV` (Li et al. 2024): once, at the end of prefill, the last ``window`` prompt
  tokens' queries score every earlier token (attention summed over the window and the KV
  group's heads, smoothed by a 1-D average pool of ``kernel`` tokens); each KV head keeps its
  top ``token_budget - window`` earlier tokens plus the window. Decode attends densely over
  what was kept and every token generated after it.

StreamingLLM, H2O, TOVA and SnapKV mask a dense read of the cache: they are here to compare
accuracy, not speed.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import torch

from longforge.sparse.attention import attend, probabilities
from longforge.sparse.backends import get_backend
from longforge.sparse.hf import SparseCache, sparse_attention
from longforge.sparse.selection import check_selection, grouped

DENSE_AUTO = "auto"


# ------------------------------------------------------------------ which layers stay dense
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
    return _dense_layer_ids(spec, None if layer_types is None else tuple(layer_types))


@functools.lru_cache(maxsize=256)
def _dense_layer_ids(spec, layer_types: tuple | None) -> frozenset[int]:
    rule, n = parse_dense_layers(spec)
    if layer_types is None:
        return frozenset(range(n))
    full = [i for i, t in enumerate(layer_types) if t == "full_attention"]
    if rule == "index":
        return frozenset(range(min(n, len(layer_types))))
    if rule == "full":
        return frozenset(full[:n])
    return frozenset(range(min(2, len(layer_types)))) | frozenset(full[:1])


# ------------------------------------------------------------------ the policies
@dataclass
class Policy:
    """What every policy shares: the budget, the page size, the dense layers, the backend."""

    token_budget: int | None = None
    page_size: int = 16
    dense_layers: int | str = DENSE_AUTO
    backend: str | None = None           # None: the default (see longforge.sparse.backends)
    name: ClassVar[str] = "policy"
    needs_scores: ClassVar[bool] = False  # its cache tracks the prefill's attention (H2O)
    compresses_prefill: ClassVar[bool] = False  # it acts at the end of prefill (SnapKV)

    def __post_init__(self):
        if self.token_budget is not None and self.token_budget < 1:
            raise ValueError(f"token_budget must be >= 1, got {self.token_budget}")
        if self.page_size < 1:
            raise ValueError("page_size must be >= 1")
        parse_dense_layers(self.dense_layers)

    def __call__(self, model, max_len: int | None = None):
        """``with policy(model): model.generate(...)`` -- decode with this policy."""
        return sparse_attention(model, self, max_len)

    def label(self) -> str:
        return self.name if self.token_budget is None else f"{self.name}@{self.token_budget}"

    def is_dense_layer(self, layer_idx: int, layer_types=None) -> bool:
        """``layer_idx`` decodes densely (see :func:`dense_layer_ids`)."""
        return layer_idx in dense_layer_ids(self.dense_layers, layer_types)

    def decode(self, layer_idx: int, layer, q: torch.Tensor, key_mask: torch.Tensor | None,
               scale: float, softcap: float | None, layer_types=None) -> torch.Tensor:
        """Attention output ``[B, H_q, D]`` of the decode query ``q [B, H_q, D]``."""
        if self.token_budget is None or self.is_dense_layer(layer_idx, layer_types):
            return get_backend(self.backend, q.device).dense(q, layer.store, scale, key_mask,
                                                             softcap)
        return self.sparse_decode(layer, q, key_mask, scale, softcap)

    def sparse_decode(self, layer, q, key_mask, scale, softcap):  # pragma: no cover - abstract
        raise NotImplementedError

    def prefill(self, layer_idx: int, layer, query, key, attention_mask, scale, softcap,
                layer_types=None) -> None:
        """Called with every multi-token forward of a paged layer (prefill); nothing by default."""


@dataclass
class Dense(Policy):
    name: ClassVar[str] = "dense"

    def __post_init__(self):
        super().__post_init__()
        self.token_budget = None


@dataclass
class Quest(Policy):
    selection: str = "group"
    name: ClassVar[str] = "quest"

    def __post_init__(self):
        super().__post_init__()
        check_selection(self.selection)

    def sparse_decode(self, layer, q, key_mask, scale, softcap):
        if layer.store.page_size != self.page_size:
            raise ValueError(f"cache pages have {layer.store.page_size} tokens, policy wants "
                             f"{self.page_size}")
        return get_backend(self.backend, q.device).quest(q, layer.store, self.token_budget, scale,
                                                         key_mask, softcap, self.selection)


def _full_mask(key_mask, b, length, device):
    if key_mask is None:
        return torch.ones(b, length, dtype=torch.bool, device=device)
    return key_mask[:, :length].bool()


def _masked_decode(q, store, valid, scale, softcap):
    """Exact attention over the tokens with ``valid [B, H_kv or 1, L]``; returns (out, probs)."""
    b, hq, d = q.shape
    out, probs = attend(grouped(q, store.k.shape[1]), store.keys(), store.values(),
                        valid[:, :, None, :], scale, softcap, return_probs=True)
    return out.reshape(b, hq, d), probs


@dataclass
class StreamingLLM(Policy):
    sinks: int = 4
    name: ClassVar[str] = "streaming"

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
    name: ClassVar[str] = "h2o"
    needs_scores: ClassVar[bool] = True

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


@dataclass
class TOVA(Policy):
    name: ClassVar[str] = "tova"

    def sparse_decode(self, layer, q, key_mask, scale, softcap):
        store = layer.store
        L = store.length
        alive = _full_mask(key_mask, q.shape[0], L, q.device).clone()
        prev = layer.state.get("tova_kept")
        if prev is not None:  # evictions are permanent; tokens appended since are alive
            alive[:, : prev.shape[-1]] &= prev
        out, probs = _masked_decode(q, store, alive[:, None], scale, softcap)
        layer.state["tova_kept"] = self._evict(alive, probs)
        return out

    def _evict(self, alive: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """``alive [B, L]`` minus the lowest-attention tokens of each row that holds more than the
        budget; attention ``probs [B, H_kv, G, L]`` averaged over all the layer's heads."""
        over = alive.sum(-1) > self.token_budget
        if not bool(over.any()):
            return alive
        score = probs.mean(dim=(1, 2)).masked_fill(~alive, float("-inf"))  # [B, L]
        top = score.topk(min(self.token_budget, score.shape[-1]), dim=-1).indices
        kept = torch.zeros_like(alive).scatter_(-1, top, True) & alive
        return torch.where(over[:, None], kept, alive)


@dataclass
class SnapKV(Policy):
    window: int = 64
    kernel: int = 5
    name: ClassVar[str] = "snapkv"
    compresses_prefill: ClassVar[bool] = True

    def prefill(self, layer_idx, layer, query, key, attention_mask, scale, softcap,
                layer_types=None) -> None:
        """Choose what each KV head keeps from this forward's last ``window`` queries (a
        chunked prefill chooses again at every chunk; the last chunk's choice stands)."""
        if self.token_budget is None or self.is_dense_layer(layer_idx, layer_types):
            return
        b, hq, t, d = query.shape
        hkv, L = key.shape[1], key.shape[2]
        w = min(self.window, self.token_budget, t)
        qw = query[:, :, t - w:].reshape(b, hkv, hq // hkv, w, d)
        if attention_mask is not None:
            m = attention_mask[:, :, t - w:, :L]
            allowed = (m if m.dtype == torch.bool else m == 0)[:, :, None]
        else:
            allowed = (torch.arange(L, device=query.device)
                       <= torch.arange(L - w, L, device=query.device)[:, None])
        p = probabilities(qw, key[:, :, None], allowed, scale, softcap).nan_to_num(0.0)
        votes = p.sum(dim=(2, 3))[..., : L - w]  # [B, H_kv, L - w]: earlier tokens only
        if votes.shape[-1] > 0 and self.kernel > 1:
            votes = torch.nn.functional.avg_pool1d(votes, self.kernel, stride=1,
                                                   padding=self.kernel // 2,
                                                   count_include_pad=False)[..., : L - w]
        real = _full_mask(None if attention_mask is None else _row_mask(attention_mask, L),
                          b, L, query.device)
        keep_n = min(self.token_budget - w, L - w)
        kept = torch.zeros(b, hkv, L, dtype=torch.bool, device=query.device)
        kept[..., L - w:] = True
        if keep_n > 0:
            votes = votes.masked_fill(~real[:, None, : L - w], float("-inf"))
            top = votes.topk(keep_n, dim=-1)
            kept[..., : L - w].scatter_(-1, top.indices, top.values > float("-inf"))
        layer.state["snapkv_kept"] = kept & real[:, None]

    def sparse_decode(self, layer, q, key_mask, scale, softcap):
        store = layer.store
        kept = layer.state.get("snapkv_kept")
        if kept is None:
            raise RuntimeError("SnapKV compresses at the end of prefill: set the policy before "
                               "the prompt's last multi-token forward (generate does)")
        alive = _full_mask(key_mask, q.shape[0], store.length, q.device)[:, None].expand(
            -1, store.k.shape[1], -1).clone()
        alive[..., : kept.shape[-1]] &= kept  # tokens after the prompt are all kept
        return _masked_decode(q, store, alive, scale, softcap)[0]


def _row_mask(attention_mask, length: int) -> torch.Tensor:
    """The last query's row of a 4D mask as bool ``[B, L]`` (True = may attend)."""
    row = attention_mask[:, 0, -1, :length]
    return row if row.dtype == torch.bool else row == 0


POLICIES = {"dense": Dense, "quest": Quest, "streaming": StreamingLLM, "h2o": H2O, "tova": TOVA,
            "snapkv": SnapKV}
# method names of the GQA selection ablations in `longforge eval` (Quest with another selection)
ALIASES = {"quest-rank": ("quest", {"selection": "rank"}),
           "quest-head": ("quest", {"selection": "head"})}
NAMES = (*POLICIES, *ALIASES)


def make_policy(name: str, token_budget: int | None = None, **kwargs) -> Policy:
    """A policy by name (``quest-rank`` / ``quest-head``: :class:`Quest` with that selection)."""
    if name in ALIASES:
        name, extra = ALIASES[name]
        kwargs = {**extra, **kwargs}
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(NAMES)}")
    return POLICIES[name](token_budget=token_budget, **kwargs)


# ------------------------------------------------------------------ short forms
class QuestCache(SparseCache):
    """A :class:`SparseCache` with the Quest policy (for users calling ``forward`` themselves)."""

    def __init__(self, model, token_budget: int = 2048, page_size: int = 16,
                 dense_layers: int | str = DENSE_AUTO, max_len: int = 0, selection: str = "group",
                 backend: str | None = None):
        super().__init__(model, Quest(token_budget, page_size, dense_layers, backend, selection),
                         max_len)


def quest(model, token_budget: int = 2048, page_size: int = 16,
          dense_layers: int | str = DENSE_AUTO, max_len: int | None = None,
          selection: str = "group", backend: str | None = None):
    """``with quest(model, token_budget=2048): model.generate(...)``: the short form of
    ``Quest(token_budget=...)(model)``.

    ``selection``: ``"group"`` (default; K pages per KV group by the max over its heads, each
    read once per group), ``"rank"`` (K pages per KV group, the group's heads taking their best
    pages in turn) or ``"head"`` (K pages per query head, as on multi-head models; a group
    reads the union of its heads' pages, up to G x the bytes).

    ``dense_layers``: which layers decode densely: ``"auto"`` (default: the paper's first two
    layers, plus the first full-attention layer on hybrid models such as Gemma 3, whose first
    layers are sliding-window), ``N`` (the first N layers by index) or ``"full:N"`` (the first N
    full-attention layers); see :func:`dense_layer_ids`.
    """
    return Quest(token_budget, page_size, dense_layers, backend, selection)(model, max_len)


def streaming_llm(model, token_budget: int, sinks: int = 4, dense_layers: int | str = DENSE_AUTO,
                  max_len: int | None = None):
    """StreamingLLM (attention sinks + recent window) at ``token_budget`` tokens."""
    return StreamingLLM(token_budget, dense_layers=dense_layers, sinks=sinks)(model, max_len)


def h2o(model, token_budget: int, dense_layers: int | str = DENSE_AUTO,
        max_len: int | None = None):
    """H2O (heavy hitters + recent window) at ``token_budget`` tokens."""
    return H2O(token_budget, dense_layers=dense_layers)(model, max_len)


def tova(model, token_budget: int, dense_layers: int | str = DENSE_AUTO,
         max_len: int | None = None):
    """TOVA (evict the lowest-attention token once over budget) at ``token_budget`` tokens."""
    return TOVA(token_budget, dense_layers=dense_layers)(model, max_len)


def snapkv(model, token_budget: int, window: int = 64, kernel: int = 5,
           dense_layers: int | str = DENSE_AUTO, max_len: int | None = None):
    """SnapKV (observation-window selection at the end of prefill) at ``token_budget`` tokens."""
    return SnapKV(token_budget, dense_layers=dense_layers, window=window, kernel=kernel)(model,
                                                                                          max_len)


def dense(model, max_len: int | None = None):
    """Dense decode attention over the same paged cache (the baseline of the same harness)."""
    return Dense()(model, max_len)
