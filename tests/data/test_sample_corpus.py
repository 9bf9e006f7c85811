"""The bundled multi-domain sample corpus (built by scripts/build_sample_corpus.py)."""

import gzip
import json
from collections import Counter
from importlib.resources import files

import pytest


@pytest.fixture(scope="module")
def corpus_path():
    return files("longforge.data.sample").joinpath("corpus.jsonl.gz")


@pytest.fixture(scope="module")
def docs(corpus_path):
    with corpus_path.open("rb") as fh, gzip.open(fh, "rt", encoding="utf-8") as gz:
        return [json.loads(line) for line in gz if line.strip()]


def test_file_exists(corpus_path):
    assert corpus_path.is_file()
    assert files("longforge.data.sample").joinpath("PROVENANCE.md").is_file()


def test_ids_unique(docs):
    ids = [d["id"] for d in docs]
    assert len(ids) == len(set(ids))


def test_every_line_well_formed(docs):
    for d in docs:
        assert isinstance(d["id"], str) and d["id"]
        assert isinstance(d["text"], str) and d["text"].strip(), d["id"]
        assert "\x00" not in d["text"], d["id"]
        assert isinstance(d["source"], str) and d["source"], d["id"]
        assert d["id"].startswith(d["source"] + "/"), d["id"]
        assert isinstance(d["meta"], dict)
        assert d["meta"].get("path") and d["meta"].get("license"), d["id"]


def test_domains_and_size(docs):
    domains = Counter(d["source"] for d in docs)
    assert len(domains) >= 5, domains
    assert len(docs) >= 1500


def test_has_long_documents(docs):
    assert sum(len(d["text"]) > 8000 for d in docs) >= 50


def test_no_exact_duplicate_texts(docs):
    texts = [d["text"] for d in docs]
    assert len(texts) == len(set(texts))
