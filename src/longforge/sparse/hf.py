"""The Hugging Face integration: a paged KV cache and an attention function for stock models.

Nothing is forked. ``with Quest(token_budget=2048)(model): model.generate(...)`` (or the short
form ``longforge.quest(model, token_budget=2048)``) runs :func:`sparse_attention`, which:

* registers an attention function and, under the same name, the SDPA mask function
  (``AttentionInterface`` / ``AttentionMaskInterface``; without the mask function Gemma 3's
  sliding layers would silently lose their window), and switches the model to it;
* adds a forward pre-hook to every attention module that hands the attention function the
  KV cache the decoder layer passed (``cache``, or ``past_key_values`` before transformers 5.24);
* wraps ``model.generate`` so that, when no cache is given, it decodes with a
  :class:`SparseCache`: full-attention layers are ``PagedKV``-backed :class:`PagedLayer`s,
  sliding-window layers keep the stock ``DynamicSlidingWindowLayer``;
* restores the attention implementation, the registries, the hooks and ``generate`` on exit.

Rules of the attention function: a forward with more than one query token (prefill) is dense
SDPA with the model's mask (a policy that compresses at the end of prefill, SnapKV, sees it
through ``policy.prefill``); a decode step (one query token) on a paged layer asks the cache's
policy (:mod:`longforge.sparse.policies`: ``policy.decode`` -> a backend's step -> its kernel);
sliding layers always run the stock SDPA path with their window mask. The model's ``scaling``
(Gemma 3: ``query_pre_attn_scalar**-0.5``) and ``softcap`` (when the model passes one) are
honoured. Left padding (batch > 1) reaches the decode path as a per-row key mask.

This module knows policies only by what they do (``decode``, ``prefill``, ``needs_scores``,
``page_size``); a cache without a policy decodes densely.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicSlidingWindowLayer
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from longforge.models import cache_arg
from longforge.sparse.attention import attend, probabilities
from longforge.sparse.backends import get_backend
from longforge.sparse.store import PagedKV

ATTN_NAME = "longforge_sparse"
_PAST = "_longforge_past"


class PagedLayer(CacheLayerMixin):
    """A full-attention cache layer stored in a preallocated, page-contiguous ``PagedKV``.

    Grows (by doubling, a copy) only if more tokens arrive than ``max_len``. With
    ``track_scores`` it also keeps, per KV head and token, the attention it has received
    (summed over queries and the group's heads), which H2O needs; with ``snapshot_every`` N it
    also keeps a copy of those scores every N prefill queries, so that the cache can be cut back
    to a prefix with the scores that prefix alone would have given (:meth:`prefix`).
    """

    is_sliding = False

    def __init__(self, max_len: int = 0, page_size: int = 16, track_scores: bool = False,
                 snapshot_every: int | None = None):
        super().__init__()
        self.max_len, self.page_size, self.track_scores = max_len, page_size, track_scores
        self.snapshot_every = snapshot_every
        self.snapshots: dict[int, torch.Tensor] = {}
        self.store: PagedKV | None = None
        self.scores: torch.Tensor | None = None
        self.state: dict = {}  # per-policy state (H2O's kept set)

    def lazy_initialization(self, key_states, value_states) -> None:
        b, h, t, d = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        self.store = PagedKV(b, h, d, max(self.max_len, t, 1), self.page_size,
                             key_states.dtype, key_states.device)
        if self.track_scores:
            self.scores = torch.zeros(b, h, self.store.capacity, device=key_states.device)
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        need = self.store.length + key_states.shape[-2]
        if need > self.store.capacity:
            self._grow(max(need, 2 * self.store.capacity))
        self.store.append(key_states, value_states)
        self.keys, self.values = self.store.keys(), self.store.values()
        return self.keys, self.values

    def _grow(self, capacity: int) -> None:
        old = self.store
        b, h, cap, d = old.k.shape
        new = PagedKV(b, h, d, capacity, old.page_size, old.k.dtype, old.k.device, old.meta.dtype)
        new.k[:, :, :cap], new.v[:, :, :cap] = old.k, old.v
        new.meta[:, :, : old.meta.shape[2]] = old.meta
        new.length = old.length
        self.store = new
        if self.scores is not None:
            self.scores = torch.cat([self.scores, self.scores.new_zeros(b, h, new.capacity - cap)],
                                    dim=-1)

    def get_seq_length(self) -> int:
        return self.store.length if self.is_initialized else 0

    def prefix(self, length: int, max_len: int) -> "PagedLayer":
        """A new layer holding this one's first ``length`` tokens (a copy, room for
        ``max_len``): the keys, values and page metadata, and, when scores are tracked, the
        scores of the first ``length`` queries (``length`` must then be a snapshot point)."""
        new = PagedLayer(max_len, self.page_size, self.track_scores)
        new.update(self.store.k[:, :, :length], self.store.v[:, :, :length])
        if self.track_scores:
            if length not in self.snapshots:
                raise ValueError(f"no score snapshot at {length} tokens (every "
                                 f"{self.snapshot_every})")
            new.scores[..., :length] = self.snapshots[length]
        return new

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1  # grows on demand

    def reset(self) -> None:
        if self.is_initialized:
            self.store.reset()
            if self.scores is not None:
                self.scores.zero_()
        self.state = {}

    def _select(self, index: torch.Tensor) -> None:
        if not self.is_initialized:
            return
        self.store.select_batch(index)
        self.keys, self.values = self.store.keys(), self.store.values()
        if self.scores is not None:
            self.scores = self.scores[index]
        self.state = {k: v[index] for k, v in self.state.items()}

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._select(beam_idx.to(self.device))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._select(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._select(torch.arange(self.store.k.shape[0], device=self.device)
                         .repeat_interleave(repeats))


def _layer_specs(model_or_config):
    """``(kinds, kwargs)`` of the model's layers as transformers builds its cache."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    return get_layer_types_and_kwargs(getattr(model_or_config, "config", model_or_config)
                                      .get_text_config())


class SparseCache(Cache):
    """A transformers ``Cache`` whose full-attention layers are :class:`PagedLayer` s.

    ``policy`` (a :class:`~longforge.sparse.policies.Policy`; None: dense decode) decides
    decode-step attention; it can be swapped between steps (``cache.policy = ...``), e.g. after a
    shared prefill.
    """

    def __init__(self, model_or_config, policy=None, max_len: int = 0,
                 page_size: int | None = None, track_scores: bool | None = None,
                 snapshot_every: int | None = None):
        self.policy = policy
        page_size = page_size or getattr(policy, "page_size", 16)
        track = getattr(policy, "needs_scores", False) if track_scores is None else track_scores
        layers = []
        kinds, kwargs = _layer_specs(model_or_config)
        self.layer_types = tuple(kinds)
        for kind, kw in zip(kinds, kwargs):
            if kind == "full_attention":
                layers.append(PagedLayer(max_len, page_size, track, snapshot_every))
            elif kind in ("sliding_attention", "chunked_attention"):
                layers.append(DynamicSlidingWindowLayer(**kw))
            else:
                raise ValueError(f"layer type {kind!r} is not supported by longforge.sparse")
        super().__init__(layers=layers)

    @staticmethod
    def layer_kinds(model_or_config) -> tuple[str, ...]:
        """The attention kind of each layer (``full_attention``, ``sliding_attention``, ...) as
        transformers builds the model's cache, i.e. the layers this cache gives it."""
        return tuple(_layer_specs(model_or_config)[0])

    def prefix(self, length: int, max_len: int = 0) -> "SparseCache":
        """A new cache (same policy) holding this one's first ``length`` tokens, with room for
        ``max_len``: a prompt that starts with this cache's tokens reuses their prefill. Only
        for models whose every layer is full attention (a sliding window keeps no prefix)."""
        if not all(isinstance(layer, PagedLayer) for layer in self.layers):
            raise ValueError("only caches of full-attention layers can be cut to a prefix")
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.layers = [layer.prefix(length, max_len) for layer in self.layers]
        return new


# ------------------------------------------------------------------ the attention function
def _dense(module, query, key, value, attention_mask, scaling, softcap, **kwargs):
    """Stock SDPA; models with logit softcapping get the same math written out (SDPA has none),
    with a finite floor for masked logits, as eager attention does (padding rows stay finite)."""
    if softcap is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      scaling=scaling, **kwargs)
    g = query.shape[1] // key.shape[1]
    out = attend(query, repeat_kv(key, g), repeat_kv(value, g), attention_mask, scaling, softcap,
                 floor=True)
    return out.transpose(1, 2).contiguous(), None


def _key_mask(attention_mask) -> torch.Tensor | None:
    """The decode query's row of the 4D mask as bool ``[B, L]`` (True = may attend)."""
    if attention_mask is None:
        return None
    row = attention_mask[:, 0, -1, :]
    return row if row.dtype == torch.bool else row == 0


def _accumulate_scores(layer: PagedLayer, query, key, attention_mask, scaling, softcap,
                       chunk: int = 256) -> None:
    """Add the prefill's attention probabilities per key (summed over queries, group heads), at
    most ``chunk`` queries at a time, and snapshot the sums every ``layer.snapshot_every``
    queries (counted from the first token of the cache)."""
    b, hq, t, d = query.shape
    hkv, L = key.shape[1], key.shape[2]
    qg = query.view(b, hkv, hq // hkv, t, d)
    qpos = torch.arange(L - t, L, device=query.device)
    every = layer.snapshot_every
    s0 = 0
    while s0 < t:
        end = min(t, s0 + chunk)
        if every:  # cut at the next snapshot point
            end = min(end, ((L - t + s0) // every + 1) * every - (L - t))
        if attention_mask is not None:
            m = attention_mask[:, :, s0:end]
            allowed = (m if m.dtype == torch.bool else m == 0)[:, :, None]
        else:
            allowed = torch.arange(L, device=query.device) <= qpos[s0:end, None]
        p = probabilities(qg[:, :, :, s0:end], key[:, :, None], allowed, scaling,
                          softcap).nan_to_num(0.0)
        layer.scores[:, :, :L] += p.sum(dim=(2, 3))
        seen = L - t + end  # queries seen so far
        if every and seen % every == 0:
            layer.snapshots[seen] = layer.scores[:, :, :seen].clone()
        s0 = end


def sparse_attention_forward(module, query, key, value, attention_mask, scaling=None,
                             dropout=0.0, **kwargs):
    """Attention function registered as ``longforge_sparse`` (signature of transformers')."""
    scaling = module.head_dim ** -0.5 if scaling is None else scaling
    softcap = kwargs.pop("softcap", None)
    past = getattr(module, _PAST, None)
    layer = past.layers[module.layer_idx] if isinstance(past, SparseCache) else None
    if not isinstance(layer, PagedLayer):
        if query.shape[2] == 1 and past is not None and not isinstance(past, SparseCache):
            raise TypeError("longforge sparse attention decodes from a SparseCache; got "
                            f"{type(past).__name__}. Pass SparseCache(model, policy) (or "
                            "QuestCache(model, ...)) as the model's cache, or let generate() "
                            "create it.")
        return _dense(module, query, key, value, attention_mask, scaling, softcap, **kwargs)
    policy = past.policy
    if query.shape[2] > 1:  # prefill (or a multi-token chunk): dense
        if layer.scores is not None:
            _accumulate_scores(layer, query, key, attention_mask, scaling, softcap)
        if policy is not None:
            policy.prefill(module.layer_idx, layer, query, key, attention_mask, scaling, softcap,
                           past.layer_types)
        return _dense(module, query, key, value, attention_mask, scaling, softcap, **kwargs)
    q, key_mask = query[:, :, 0], _key_mask(attention_mask)
    if policy is None:
        out = get_backend(None, q.device).dense(q, layer.store, scaling, key_mask, softcap)
    else:
        out = policy.decode(module.layer_idx, layer, q, key_mask, scaling, softcap,
                            past.layer_types)
    return out[:, None].contiguous(), None


# ------------------------------------------------------------------ installing on a model
_ACTIVE = 0


def _register() -> None:
    global _ACTIVE
    if _ACTIVE == 0:
        AttentionInterface.register(ATTN_NAME, sparse_attention_forward)
        AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    _ACTIVE += 1


def _unregister() -> None:
    global _ACTIVE
    _ACTIVE -= 1
    if _ACTIVE == 0:
        AttentionInterface._global_mapping.pop(ATTN_NAME, None)
        AttentionMaskInterface._global_mapping.pop(ATTN_NAME, None)


def _attention_modules(model):
    return [m for m in model.modules()
            if type(m).__name__.endswith("Attention") and hasattr(m, "layer_idx")]


def _capture_past(module, args, kwargs):
    past = kwargs.get("cache")  # transformers >= 5.24
    setattr(module, _PAST, kwargs.get("past_key_values") if past is None else past)


def _release_past(module, args, kwargs, output):
    if hasattr(module, _PAST):
        delattr(module, _PAST)


@contextmanager
def sparse_attention(model, policy, max_len: int | None = None):
    """Decode with ``policy`` inside the context (``generate`` builds a :class:`SparseCache`);
    ``policy.__call__(model)`` is this. A cache passed to ``generate`` must be a
    :class:`SparseCache` (its own policy is used)."""
    if getattr(model, "_longforge_active", False):
        raise RuntimeError("a longforge sparse-attention context is already active on this model")
    modules = _attention_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__}: no attention modules with a layer_idx found")
    previous_impl = model.config._attn_implementation
    had_generate = "generate" in vars(model)
    old_generate = vars(model).get("generate")
    stock_generate = model.generate
    _register()
    hooks = []
    try:
        model.set_attn_implementation(ATTN_NAME)
        for m in modules:
            hooks.append(m.register_forward_pre_hook(_capture_past, with_kwargs=True))
            hooks.append(m.register_forward_hook(_release_past, with_kwargs=True))

        @functools.wraps(stock_generate)
        def generate(*args, **kwargs):
            drafts = [k for k in _DRAFT_ARGS if kwargs.get(k) is not None]
            if drafts:
                raise ValueError(f"{', '.join(drafts)}: assisted and prompt-lookup decoding "
                                 "verify several draft tokens in one forward, which the sparse "
                                 "policies run densely, like a prefill; the output would not be "
                                 "the policy's. Decode one token per step inside this context.")
            past = next((kwargs[n] for n in ("cache", "past_key_values")
                         if kwargs.get(n) is not None), None)
            if past is None:
                kwargs[cache_arg(model)] = SparseCache(
                    model, policy, max_len or _generate_length(model, args, kwargs))
            elif not isinstance(past, SparseCache):
                raise TypeError("inside a longforge sparse-attention context, the cache passed "
                                f"to generate must be a longforge SparseCache, got "
                                f"{type(past).__name__}")
            return stock_generate(*args, **kwargs)

        model.generate = generate
        model._longforge_active = True
        yield model
    finally:
        for h in hooks:
            h.remove()
        for m in modules:
            _release_past(m, None, None, None)
        if had_generate:
            model.generate = old_generate
        else:
            vars(model).pop("generate", None)
        vars(model).pop("_longforge_active", None)
        model.set_attn_implementation(previous_impl)
        _unregister()


# generate() arguments that turn on draft-and-verify decoding (several query tokens per step)
_DRAFT_ARGS = ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit")


def _generate_length(model, args, kwargs) -> int:
    """Prompt length + max_new_tokens, to preallocate the cache (0: let it grow)."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    if ids is None:
        ids = kwargs.get("inputs_embeds")
    new = kwargs.get("max_new_tokens") or model.generation_config.max_new_tokens
    if ids is None or new is None:
        return 0
    return ids.shape[1] + new
