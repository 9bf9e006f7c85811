"""longforge: long-context data synthesis (Quest), long-dependency scoring (ProLong) and
query-aware sparse attention (Quest) for Hugging Face causal LMs."""
__version__ = "0.1.0"

# Sparse-attention policies and their short forms, imported on first use (torch is not loaded
# at import).
_SPARSE = ("quest", "streaming_llm", "h2o", "tova", "snapkv", "dense", "sparse_attention",
           "SparseCache", "QuestCache", "Quest", "Dense", "StreamingLLM", "H2O", "TOVA", "SnapKV")


def __getattr__(name):
    if name in _SPARSE:
        import longforge.sparse as sparse

        return getattr(sparse, name)
    raise AttributeError(f"module 'longforge' has no attribute {name!r}")
