import json

import numpy as np
import pytest

from longforge.analyze.analyses import entropy, mean_pairwise_cosine


def test_mean_pairwise_cosine_arithmetic():
    e = np.eye(3, dtype=np.float32)
    assert mean_pairwise_cosine(e) == pytest.approx(0.0)
    v = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    assert mean_pairwise_cosine(v) == pytest.approx(1 / 3)  # pairs: 1, 0, 0
    assert mean_pairwise_cosine(v[:1]) is None


def test_entropy():
    assert entropy({"a": 0.5, "b": 0.5}) == pytest.approx(1.0)
    assert entropy({"a": 1.0}) == 0.0


def test_analyze_ranks_grouped_above_shuffled(tmp_path):
    """Topic-grouped packing must show a higher intra-context similarity than a shuffle."""
    from longforge.analyze.report import analyze
    from longforge.synth.config import SynthConfig
    from longforge.synth.pipeline import run

    texts = {"db": "SQL query planner uses indexes to join tables and sort rows",
             "bio": "cells divide by mitosis and the nucleus holds chromosomes with genes",
             "music": "the orchestra tuned violins and the conductor raised the baton"}
    lines = [json.dumps({"id": f"{t}/{i}", "source": t, "queries": [f"How do {t} systems work?"],
                         "text": f"{s} (note {i}: " + "detail " * (20 + i) + ")"})
             for t, s in texts.items() for i in range(6)]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    outs = []
    for m in ("quest", "standard"):
        run(SynthConfig(inputs=[str(tmp_path / "c.jsonl")], output=tmp_path / m, method=m,
                        query_source="user", context_length=256, group_boundary="pad"))
        outs.append(tmp_path / m)
    res = analyze(outs, tmp_path / "report", n_contexts=2)
    assert res["ordering"] == ["standard", "quest"]
    g = res["keyword_groups"]["quest"]  # the three topics are the three keywords
    assert (g["keywords"], g["multi_doc_keywords"], g["documents_in_multi_doc_keywords"]) == (3, 3, 18)
    assert g["mean"] > res["similarity"]["standard"]["mean"]
    for f in ("report.md", "report.json", "similarity.png", "domains.png", "projection.png",
              "keyword_sizes.png"):
        assert (tmp_path / "report" / f).stat().st_size > 0


def test_keyword_breakdown_separates_fallback_sequences():
    from pathlib import Path

    from longforge.analyze.analyses import keyword_breakdown
    from longforge.analyze.data import SynthOutput

    docs = {d: {"hash": d, "source": "s", "n_tokens": 10} for d in "abcd"}
    vecs = {"a": np.array([1.0, 0.0]), "b": np.array([1.0, 0.0]),
            "c": np.array([1.0, 0.0]), "d": np.array([0.0, 1.0])}
    seqs = [{"doc_ids": ["a", "b"], "keyword": "k"}, {"doc_ids": ["c", "d"], "keyword": None}]
    out = SynthOutput(Path("x"), "quest", {}, seqs, docs)
    b = keyword_breakdown(out, vecs)
    assert b["keyword groups"]["mean"] == pytest.approx(1.0)
    assert b["no-keyword fallback"]["mean"] == pytest.approx(0.0)
    assert keyword_breakdown(SynthOutput(Path("x"), "quest", {}, seqs[:1], docs), vecs) is None
    assert keyword_breakdown(SynthOutput(Path("x"), "standard", {}, seqs, docs), vecs) is None
