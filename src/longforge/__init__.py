"""longforge: long-context data synthesis (Quest), long-dependency scoring (ProLong) and
query-aware sparse attention (Quest) for Hugging Face causal LMs."""
__version__ = "0.1.0"
