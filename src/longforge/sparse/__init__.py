"""Quest query-aware sparse attention for decoding long contexts (arXiv 2406.10774), and the
KV-cache policies it is compared with, inside stock Hugging Face models. See docs/sparse.md.

``with Quest(token_budget=2048)(model): model.generate(...)`` (short form:
``longforge.quest(model, token_budget=2048)``). The layers, each importing only those below it:

* :mod:`.store` -- ``PagedKV``: page-contiguous K/V with per-page key min/max;
* :mod:`.selection` -- Quest's page choice (criticality, top-K, GQA selection rules);
* :mod:`.attention` -- exact softmax attention with logit softcapping, written once;
* :mod:`.backends` -- one decode step: ``reference``, ``torch`` (CPU), ``c`` (CPU), ``triton``;
* :mod:`.hf` -- the paged cache and the attention function for Hugging Face models;
* :mod:`.policies` -- Dense, Quest, StreamingLLM, H2O, TOVA, SnapKV, and the short forms.

Names are imported lazily so that ``import longforge.sparse`` does not load transformers.
"""
from __future__ import annotations

_HF = ("sparse_attention", "SparseCache", "PagedLayer")
_POLICIES = ("Policy", "Dense", "Quest", "StreamingLLM", "H2O", "TOVA", "SnapKV", "make_policy",
             "QuestCache", "quest", "streaming_llm", "h2o", "tova", "snapkv", "dense")
__all__ = [*_HF, *_POLICIES, "PagedKV", "get_backend"]


def __getattr__(name):
    if name in _HF:
        from longforge.sparse import hf

        return getattr(hf, name)
    if name in _POLICIES:
        from longforge.sparse import policies

        return getattr(policies, name)
    if name == "PagedKV":
        from longforge.sparse.store import PagedKV

        return PagedKV
    if name == "get_backend":
        from longforge.sparse.backends import get_backend

        return get_backend
    raise AttributeError(f"module 'longforge.sparse' has no attribute {name!r}")
