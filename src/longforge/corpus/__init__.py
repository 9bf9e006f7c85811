"""Corpus I/O: documents in, documents out, every input accounted for.

* :class:`Document` is what flows between pipeline steps.
* :func:`read_documents` streams JSONL (plain or .gz), Parquet, or folders of text files, and
  reports every input that cannot be used as a :class:`Skip` with file, line, field and reason;
  :func:`plan_shards` splits the input once, so that K shards read it once in total.
* :class:`ShardWriter` writes sharded outputs atomically (temp name, then rename).
* :class:`Manifest` keeps the books: documents read, used, skipped (with reasons).
"""
from longforge.corpus.document import Document, Skip
from longforge.corpus.manifest import Manifest
from longforge.corpus.readers import (CorpusError, account_duplicates, duplicate_skip, iter_input_files, read_corpus,
                                      read_documents)
from longforge.corpus.shards import ShardPlan, input_order, plan_shards
from longforge.corpus.writers import ShardWriter, atomic_write_json, atomic_write_text, write_documents

__all__ = ["Document", "Skip", "Manifest", "CorpusError", "read_documents", "read_corpus",
           "iter_input_files", "duplicate_skip", "account_duplicates", "plan_shards", "ShardPlan", "input_order",
           "ShardWriter", "write_documents", "atomic_write_json", "atomic_write_text"]
