"""Predicted queries through the whole pipeline with a fake, instant predictor (the real Gemma
tokenizer segments the documents): the per-segment cache, determinism cold vs warm, and the
few-shot echo filter."""
import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from longforge.synth.config import SynthConfig, cached_tokenizer
from longforge.synth.pipeline import run

TOPICS = ["kernel scheduler", "licence terms", "json parser", "package changelog"]


class FakePredictor:
    """Deterministic queries from a segment's first words; counts what it is asked."""

    calls: list[str] = []

    def __init__(self, cfg: SynthConfig, echo_for: str | None = None):
        self.tokenizer = cached_tokenizer("gemma-3-270m")
        self.settings = {"kind": "fake", "segment_tokens": cfg.segment_tokens}
        self.echo_for = echo_for

    def predict(self, segments):
        FakePredictor.calls.extend(segments)
        out = []
        for s in segments:
            if self.echo_for and self.echo_for in s:  # a near-copy of a few-shot question
                out.append("How do I undo the last commit without losing changes?")
            else:
                w = s.split()
                out.append(f"How does the {w[0]} {w[1]} {w[3]} work?")
        return out


def _corpus(path: Path) -> Path:
    lines = []
    for t, topic in enumerate(TOPICS):
        for i in range(5):
            # 3 segments of 32 tokens or so: the segment index shows in the queries
            words = " ".join(f"{topic.split()[0]} {topic.split()[1]} part{j} w{i}x{j}"
                             for j in range(30))
            lines.append(json.dumps({"id": f"t{t}/{i}", "source": f"s{t}", "text": words}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def fake(monkeypatch):
    FakePredictor.calls = []
    echo = {}
    monkeypatch.setattr(SynthConfig, "make_predictor",
                        lambda self, model=None: FakePredictor(self, echo.get("for")))
    return echo


def _cfg(tmp_path, out, **kw):
    base = dict(inputs=[str(_corpus(tmp_path / "c.jsonl"))], output=tmp_path / out,
                method="quest", query_source="causal", context_length=512, seed=0,
                segment_tokens=32, max_segments=None, query_cache=tmp_path / "qcache",
                tokenized=True, no_keyword="standard")
    return SynthConfig(**{**base, **kw})


def _queries(out: Path) -> dict[str, list[str]]:
    t = pq.read_table(out / "work" / "docs-00000.parquet", columns=["id", "queries"])
    return dict(zip(t.column("id").to_pylist(), t.column("queries").to_pylist()))


def test_cache_serves_each_max_segments_and_generates_only_missing_segments(tmp_path, fake):
    run(_cfg(tmp_path, "one", max_segments=1))
    one = _queries(tmp_path / "one")
    assert all(len(q) == 1 for q in one.values()) and len(FakePredictor.calls) == 20
    FakePredictor.calls = []
    run(_cfg(tmp_path, "two", max_segments=2))
    two = _queries(tmp_path / "two")
    assert all(len(q) == 2 and q[0] == one[d][0] for d, q in two.items())
    assert len(FakePredictor.calls) == 20  # segment 1 of each document only
    timings = json.loads((tmp_path / "two" / "timings.json").read_text())
    assert timings["query_cache"] == {"queries_from_cache": 20, "queries_generated": 20}
    FakePredictor.calls = []
    run(_cfg(tmp_path, "all", max_segments=None))
    full = _queries(tmp_path / "all")
    n_segs = {len(q) for q in full.values()}
    assert min(n_segs) > 2 and all(q[:2] == two[d] for d, q in full.items())
    assert len(FakePredictor.calls) == sum(len(q) - 2 for q in full.values())


def test_manifest_sequences_tokens_identical_cold_and_warm_cache(tmp_path, fake):
    run(_cfg(tmp_path, "cold"))
    assert FakePredictor.calls
    FakePredictor.calls = []
    run(_cfg(tmp_path, "warm"))
    assert FakePredictor.calls == []  # everything came from the cache
    for f in ("manifest.json", "sequences-00000.jsonl.gz", "tokens-00000.parquet",
              "index-00000.parquet"):
        assert (tmp_path / "cold" / f).read_bytes() == (tmp_path / "warm" / f).read_bytes(), f
    cold, warm = (json.loads((tmp_path / d / "timings.json").read_text())["query_cache"]
                  for d in ("cold", "warm"))
    assert cold["queries_generated"] == warm["queries_from_cache"] > 0
    assert warm["queries_generated"] == 0


def test_near_copies_of_few_shot_questions_give_no_keyword(tmp_path, fake):
    fake["for"] = "package changelog"
    m = run(_cfg(tmp_path, "echo", max_segments=1))
    q = m["quest"]
    assert "last git commit without losing changes" in q["prompt_example_keywords"]
    assert m["counts"]["keywords_echoing_prompt_example"] == 5  # the 5 changelog documents
    t = pq.read_table(tmp_path / "echo" / "work" / "docs-00000.parquet").to_pylist()
    assert all(r["keyword"] is None for r in t if r["id"].startswith("t3/"))
    assert all(r["keyword"] is not None for r in t if not r["id"].startswith("t3/"))
    seqs = [json.loads(x) for x in gzip.open(tmp_path / "echo" / "sequences-00000.jsonl.gz", "rt")]
    assert not any("commit" in (k or "") for s in seqs for k in s["keywords"])
    # other query sources have no prompt to echo: no filter, nothing listed
    m = run(_cfg(tmp_path, "doc", query_source="document", max_segments=1))
    assert m["quest"]["prompt_example_keywords"] == []
    assert "keywords_echoing_prompt_example" not in m["counts"]


def test_demo_stage_replaces_an_output_of_another_version(tmp_path, fake):
    from types import SimpleNamespace

    from longforge.synth.demo import synth_stage

    state = tmp_path / "synth" / "quest" / "state" / "config.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"fingerprint": "older", "config": {}}))
    msg = synth_stage(tmp_path, SimpleNamespace(spec="gemma-3-270m"))
    assert "sequences of 2048 tokens" in msg
    assert not state.exists()
    pinned = json.loads((tmp_path / "synth" / "quest" / "settings.json").read_text())
    assert pinned["command"] == "synth" and pinned["settings"]["method"] == "quest"
