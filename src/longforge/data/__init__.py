"""Data that ships with longforge: the sample corpus (``sample/corpus.jsonl.gz``, see its
``PROVENANCE.md``)."""
from __future__ import annotations

from pathlib import Path


def sample_corpus_path() -> Path:
    """The bundled sample corpus: real text from several domains (JSONL, gzip)."""
    from importlib.resources import files

    return Path(str(files("longforge.data.sample").joinpath("corpus.jsonl.gz")))
