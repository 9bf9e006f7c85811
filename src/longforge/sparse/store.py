"""Paged KV storage for one attention layer, made for page reads.

Layout (per layer): keys and values are preallocated as ``[B, H_kv, capacity, D]``; a page is
``P`` consecutive tokens, so page ``p`` of head ``h`` is the contiguous block
``k[b, h, p*P:(p+1)*P]``. Nothing grows by concatenation: appending writes in place.

Page metadata is one tensor ``meta[B, H_kv, n_pages_cap, 2*D]`` holding, per page and KV head,
the element-wise max of the page's keys in ``[..., :D]`` and the element-wise min in
``[..., D:]``. Keeping both halves in one row lets criticality stream the metadata once:

    crit(q, page) = sum_d max(q_d*max_d, q_d*min_d) = [relu(q), min(q, 0)] . [max, min]

Appending ``T`` tokens recomputes the metadata of the (at most ``T/P + 2``) pages they touch,
reading only those pages' keys, never the whole cache.
"""
from __future__ import annotations

import math

import torch


class PagedKV:
    def __init__(self, batch: int, kv_heads: int, head_dim: int, capacity: int,
                 page_size: int = 16, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", meta_dtype: torch.dtype | None = None):
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self.page_size = page_size
        self.capacity = math.ceil(capacity / page_size) * page_size
        self.k = torch.zeros(batch, kv_heads, self.capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.meta = torch.zeros(batch, kv_heads, self.capacity // page_size, 2 * head_dim,
                                dtype=meta_dtype or dtype, device=device)
        self.length = 0

    @property
    def n_pages(self) -> int:
        return math.ceil(self.length / self.page_size)

    @property
    def head_dim(self) -> int:
        return self.k.shape[-1]

    def keys(self) -> torch.Tensor:
        return self.k[:, :, : self.length]

    def values(self) -> torch.Tensor:
        return self.v[:, :, : self.length]

    def budget_pages(self, token_budget: int) -> int | None:
        """Pages a Quest step attends for ``token_budget`` tokens (``token_budget // P``, at least
        one: the last page), or None when the whole context fits the budget (``length <=
        token_budget``: the step is dense)."""
        if self.length <= token_budget:
            return None
        return max(1, token_budget // self.page_size)

    def page_mask(self, key_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Bool ``[B, n_pages]``: pages holding at least one key that may be attended (None when
        every key may be). A page of padding only must never take one of the K slots."""
        if key_mask is None:
            return None
        n, P = self.n_pages, self.page_size
        m = torch.zeros(key_mask.shape[0], n * P, dtype=torch.bool, device=key_mask.device)
        m[:, : self.length] = key_mask[:, : self.length].bool()
        return m.view(-1, n, P).any(-1)

    def rows_that_fit(self, token_budget: int, key_mask: torch.Tensor | None) -> list[int]:
        """Rows whose attendable keys fit ``token_budget`` although the padded cache does not:
        a Quest step attends them densely, like a context that fits (left padding, batch > 1)."""
        if key_mask is None or self.length <= token_budget:
            return []
        real = key_mask[:, : self.length].sum(-1)
        return (real <= token_budget).nonzero().flatten().tolist()

    def rows(self, start: int, stop: int) -> "PagedKV":
        """Batch rows ``start:stop`` as a ``PagedKV`` sharing this one's memory (views)."""
        view = object.__new__(PagedKV)
        view.page_size, view.capacity, view.length = self.page_size, self.capacity, self.length
        view.k, view.v = self.k[start:stop], self.v[start:stop]
        view.meta = self.meta[start:stop]
        return view

    def pad_mask(self, key_mask: torch.Tensor | None) -> torch.Tensor | None:
        """``key_mask[B, L]`` (True = may attend) as bool ``[B, capacity]``, False beyond ``L``
        (None stays None: every key may be attended)."""
        if key_mask is None:
            return None
        m = torch.zeros(key_mask.shape[0], self.capacity, dtype=torch.bool, device=key_mask.device)
        m[:, : key_mask.shape[1]] = key_mask.bool()
        return m

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write ``k, v`` of shape ``[B, H_kv, T, D]`` after the current tokens."""
        t = k.shape[-2]
        start, end = self.length, self.length + t
        if end > self.capacity:
            raise RuntimeError(f"KV cache full: {end} tokens > capacity {self.capacity}; "
                               "create the cache with a larger max length")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        self._update_meta(start // self.page_size, end)

    def _update_meta(self, first_page: int, end: int) -> None:
        """Recompute min/max of pages ``first_page ..`` up to token ``end`` (last may be partial)."""
        P, D = self.page_size, self.head_dim
        full_end = (end // P) * P
        lo = first_page * P
        if full_end > lo:  # whole pages: one reduction over a [.., pages, P, D] view
            blk = self.k[:, :, lo:full_end].unflatten(2, (-1, P))
            self.meta[:, :, first_page: full_end // P, :D] = blk.amax(dim=3)
            self.meta[:, :, first_page: full_end // P, D:] = blk.amin(dim=3)
        if end > full_end:  # the partial page being written
            part = self.k[:, :, full_end:end]
            p = full_end // P
            self.meta[:, :, p, :D] = part.amax(dim=2)
            self.meta[:, :, p, D:] = part.amin(dim=2)

    def set_length(self, length: int) -> None:
        """Declare the first ``length`` tokens written in place (e.g. ``k.normal_()``) and rebuild
        the metadata of all their pages in one pass (benchmarks fill caches this way)."""
        if not 0 <= length <= self.capacity:
            raise ValueError(f"length {length} outside [0, capacity {self.capacity}]")
        self.length = length
        self._update_meta(0, length)

    def reset(self) -> None:
        self.length = 0

    def select_batch(self, index: torch.Tensor) -> None:
        """Keep only batch rows ``index`` (beam search / finished sequences). The identity
        (beam search keeping every beam in place) copies nothing."""
        if index.numel() == self.k.shape[0] and bool(
                (index == torch.arange(index.numel(), device=index.device)).all()):
            return
        self.k, self.v, self.meta = self.k[index], self.v[index], self.meta[index]
