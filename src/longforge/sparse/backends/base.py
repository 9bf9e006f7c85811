"""The backend interface and the Quest decode step it runs (see :mod:`longforge.sparse.backends`)."""
from __future__ import annotations

import torch

from longforge.sparse.selection import check_selection, top_pages, top_pages_by_rank, union_pages
from longforge.sparse.store import PagedKV


class Backend:
    """One decode step of attention; subclasses supply the scores and the attention."""

    name = "backend"

    # ---------------------------------------------------------------- what a backend supplies
    def dense(self, q: torch.Tensor, store: PagedKV, scale: float,
              key_mask: torch.Tensor | None = None, softcap: float | None = None) -> torch.Tensor:
        """Dense decode attention ``[B, H_q, D]`` over the whole cache (``key_mask``: bool
        ``[B, L]``, True = may attend)."""
        raise NotImplementedError

    def group_scores(self, q: torch.Tensor, store: PagedKV) -> torch.Tensor:
        """Page scores of each KV group, the max over its heads: ``[B, H_kv, n_pages]``."""
        return self.head_scores(q, store).amax(dim=2)

    def head_scores(self, q: torch.Tensor, store: PagedKV) -> torch.Tensor:
        """Page criticality of each query head: ``[B, H_kv, G, n_pages]``."""
        raise NotImplementedError

    def attend_pages(self, q: torch.Tensor, store: PagedKV, pages: torch.Tensor, scale: float,
                     key_mask: torch.Tensor | None, softcap: float | None,
                     mine: torch.Tensor | None = None) -> torch.Tensor:
        """Exact attention ``[B, H_q, D]`` over the pages ``pages [B, H_kv, K]`` of each group;
        ``mine [B, H_kv, G, K]`` (selection "head"): which of them each head may attend."""
        raise NotImplementedError

    def attend_head_pages(self, q: torch.Tensor, store: PagedKV, top: torch.Tensor,
                          scale: float, key_mask: torch.Tensor | None,
                          softcap: float | None) -> torch.Tensor:
        """Selection "head": each query head attends its own pages ``top [B, H_kv, G, K]``.
        Here: the union of a group's pages, read once, each head masked to its own."""
        pages, mine = union_pages(top, store.n_pages)
        return self.attend_pages(q, store, pages, scale, key_mask, softcap, mine)

    # ---------------------------------------------------------------- the Quest step, once
    def select(self, q: torch.Tensor, store: PagedKV, token_budget: int,
               key_mask: torch.Tensor | None = None,
               selection: str = "group") -> torch.Tensor | None:
        """The pages one Quest step reads: ``[B, H_kv, K]`` for each KV group, or for selection
        "head" ``[B, H_kv, G, K]`` for each query head; None when the context fits the budget
        (the step is dense)."""
        check_selection(selection)
        budget_pages = store.budget_pages(token_budget)
        if budget_pages is None:
            return None
        page_ok = store.page_mask(key_mask)
        if selection == "head":
            return top_pages(self.head_scores(q, store), budget_pages, page_ok)
        if selection == "group":
            return top_pages(self.group_scores(q, store), budget_pages, page_ok)
        return top_pages_by_rank(self.head_scores(q, store), budget_pages, page_ok)

    def quest(self, q: torch.Tensor, store: PagedKV, token_budget: int, scale: float,
              key_mask: torch.Tensor | None = None, softcap: float | None = None,
              selection: str = "group") -> torch.Tensor:
        """One Quest decode step: attend exactly over the critical pages (see
        :mod:`longforge.sparse.selection`). Dense when the context fits the budget (per row:
        the short rows of a left-padded batch too); a budget below one page still keeps the
        last page."""
        chosen = self.select(q, store, token_budget, key_mask, selection)
        if chosen is None:
            return self.dense(q, store, scale, key_mask, softcap)
        if selection == "head":
            out = self.attend_head_pages(q, store, chosen, scale, key_mask, softcap)
        else:
            out = self.attend_pages(q, store, chosen, scale, key_mask, softcap)
        for r in store.rows_that_fit(token_budget, key_mask):
            out[r:r + 1] = self.dense(q[r:r + 1], store.rows(r, r + 1), scale,
                                      key_mask[r:r + 1], softcap)
        return out
