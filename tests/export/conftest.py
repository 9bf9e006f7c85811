"""Small synth runs made once per test process, and what their exports must hold."""
import gzip
import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from longforge.synth.config import SynthConfig
from longforge.synth.pipeline import run

TOPICS = {
    "kernel": "How does the kernel schedule realtime threads?",
    "licence": "What does the GNU General Public License require?",
    "parser": "How does the JSON parser handle nested arrays?",
}


def write_corpus(path: Path, n_per_topic: int = 6) -> Path:
    """Documents of three topics (user queries, so no model is needed) and of many lengths, a
    few with text whose Gemma token ids exceed 65,535."""
    lines = []
    for t, q in TOPICS.items():
        for i in range(n_per_topic):
            text = f"{t} document {i}. " + " ".join(f"{t}{j}" for j in range(20 + 23 * i))
            if i % 3 == 0:
                text += " 長い文脈の学習データ 🚀 ✨ 数据合成"
            lines.append(json.dumps({"id": f"{t}/{i}", "text": text, "source": t, "queries": [q]}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def synth_run(tmp_path_factory):
    """``make(name, **settings)``: the output folder of a small tokenized synth run (quest on
    user queries, 128 tokens, Gemma's tokenizer by default), made once per process."""
    base = tmp_path_factory.mktemp("runs")
    corpus = write_corpus(base / "corpus.jsonl")
    made = {}

    def make(name: str, **kw) -> Path:
        if name not in made:
            cfg = SynthConfig(**{**dict(inputs=[str(corpus)], output=base / name, method="quest",
                                        query_source="user", context_length=128, tokenized=True,
                                        tokenizer="tiny-llama", seed=0), **kw})
            run(cfg)
            made[name] = cfg.output
        return made[name]

    return make


def records(run_dir: Path) -> list[dict]:
    m = json.loads((run_dir / "manifest.json").read_text())
    p = run_dir / m["files"]["sequences"]
    if p.name.endswith(".parquet"):
        return pq.read_table(p).to_pylist()
    opener = gzip.open if p.name.endswith(".gz") else open
    with opener(p, "rt") as fh:
        return [json.loads(line) for line in fh]


def expected(run_dir: Path):
    """(input_ids [N, L] from tokens-00000.parquet, the spans of every sequence, n_pad of
    every sequence), the spans worked out here from the pieces: each piece's tokens, then its
    separator unless it is the last piece and the sequence is full without one."""
    m = json.loads((run_dir / "manifest.json").read_text())
    L = m["context_length"]
    t = pq.read_table(run_dir / "tokens-00000.parquet").to_pydict()
    ids = np.array(t["input_ids"], dtype=np.int64).reshape(-1, L)
    spans, pads = [], []
    for rec in records(run_dir):
        off, out = 0, []
        for k, p in enumerate(rec["pieces"]):
            start = off
            off += p["end"] - p["start"]
            if k < len(rec["pieces"]) - 1 or off < L - rec["n_pad"]:
                off += 1
            out.append((start, off))
        assert off == L - rec["n_pad"]
        spans.append(np.array(out))
        pads.append(rec["n_pad"])
    assert len(spans) == len(ids) == m["sequences"]
    return ids, spans, pads


def streaming_base():
    """mosaicml-streaming's ``streaming.base`` (``StreamingDataset``, ``MDSWriter``). The
    package's ``__init__`` also imports its vision datasets, which need torchvision; where
    torchvision is absent (its wheels each pin one torch release) the package is entered
    without that ``__init__``, leaving the MDS code as it is."""
    if importlib.util.find_spec("torchvision") is None and "streaming" not in sys.modules:
        spec = importlib.util.find_spec("streaming")
        assert spec is not None, ("mosaicml-streaming is missing: pip install --no-deps "
                                  "mosaicml-streaming (see the Makefile)")
        pkg = types.ModuleType("streaming")
        pkg.__path__, pkg.__spec__ = list(spec.submodule_search_locations), spec
        sys.modules["streaming"] = pkg
    return importlib.import_module("streaming.base")


@pytest.fixture(scope="session")
def truth():
    """``truth(run_dir)``: :func:`expected` (what every export of the run must hold)."""
    return expected


@pytest.fixture(scope="session")
def streaming():
    return streaming_base()


@pytest.fixture(scope="session")
def synth_records():
    """``synth_records(run_dir)``: the run's sequence records, in order."""
    return records
