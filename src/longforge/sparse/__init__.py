"""Quest query-aware sparse attention for decoding long contexts (SPEC.md section 3).

``with longforge.quest(model, token_budget=2048): model.generate(...)``; comparison policies
(``streaming_llm``, ``h2o``, ``dense``) run in the same harness. See docs/sparse.md.
Names are imported lazily so that ``import longforge.sparse`` does not load transformers.
"""
from __future__ import annotations

_HF = ("quest", "streaming_llm", "h2o", "dense", "sparse_attention", "SparseCache", "QuestCache",
       "PagedLayer")
_POLICIES = ("Policy", "Dense", "Quest", "StreamingLLM", "H2O", "make_policy")
__all__ = [*_HF, *_POLICIES]


def __getattr__(name):
    if name in _HF:
        from longforge.sparse import hf

        return getattr(hf, name)
    if name in _POLICIES:
        from longforge.sparse import policies

        return getattr(policies, name)
    raise AttributeError(f"module 'longforge.sparse' has no attribute {name!r}")
