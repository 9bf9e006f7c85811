"""longforge: long-context data synthesis (Quest), long-dependency scoring (ProLong) and
query-aware sparse attention (Quest) for Hugging Face causal LMs."""
__version__ = "0.1.0"

# Sparse-attention context managers, imported on first use (torch is not loaded at import).
_SPARSE = ("quest", "streaming_llm", "h2o", "dense", "sparse_attention", "SparseCache",
           "QuestCache")


def __getattr__(name):
    if name in _SPARSE:
        from longforge.sparse import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'longforge' has no attribute {name!r}")
