import gzip
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
    for m, out, gb in (("quest", tmp_path / "quest", "pad"), ("standard", tmp_path / "standard", "pad"),
                       ("quest", tmp_path / "mixed" / "quest", "mix")):
        run(SynthConfig(inputs=[str(tmp_path / "c.jsonl")], output=out, method=m,
                        query_source="user", context_length=256, group_boundary=gb))
        outs.append(out)
    # a stale file of another format beside the run's own: analyze reads what the manifest names
    (tmp_path / "standard" / "sequences-00000.jsonl").write_bytes(
        gzip.open(tmp_path / "quest" / "sequences-00000.jsonl.gz").read())
    res = analyze(outs, tmp_path / "report", n_contexts=2)
    labels = [k for k in res["similarity"]]
    quest_pad = f"{tmp_path.name}/quest"
    assert sorted(labels) == sorted(["standard", quest_pad, "mixed/quest"])  # distinct labels
    std_seqs = res["similarity"]["standard"]["sequences"]
    assert std_seqs == sum(1 for _ in gzip.open(tmp_path / "standard" / "sequences-00000.jsonl.gz"))
    assert res["ordering"][0] == "standard" and res["ordering_text"].startswith("standard <")
    ci = res["comparison"]["ci"]
    assert ci["standard"][0] < res["similarity"]["standard"]["mean"] < ci["standard"][1]
    pur = res["keyword_purity"]
    assert pur[quest_pad]["mean"] == pytest.approx(1.0) and pur[quest_pad]["pure_fraction"] == 1.0
    assert pur["mixed/quest"]["mean"] < 1.0 and "standard" not in pur
    assert res["padding"][quest_pad] > res["padding"]["mixed/quest"] == 0.0
    g = res["keyword_groups"][quest_pad]  # the three topics are the three keywords
    assert (g["keywords"], g["multi_doc_keywords"], g["documents_in_multi_doc_keywords"]) == (3, 3, 18)
    assert g["mean"] > res["similarity"]["standard"]["mean"]
    for f in ("report.md", "report.json", "similarity.png", "domains.png", "projection.png",
              "keyword_sizes.png"):
        assert (tmp_path / "report" / f).stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(
        ["report.md", "report.json", "similarity.png", "domains.png", "projection.png",
         "keyword_sizes.png"])  # PNGs renamed into place, no temporary left
    cov = res["keyword_coverage"]
    assert set(cov) == {quest_pad, "mixed/quest"} and cov[quest_pad]["in_shared_keywords_share"] == 1.0
    assert [r["documents"] for r in res["frequent_keywords"][quest_pad]] == [6, 6, 6]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Keyword purity" in md and "95% CI" in md and "vs standard" in md
    assert "## Keyword coverage" in md and "### Most frequent keywords" in md
    assert set(res["comparison"]["versus_reference"]) == {quest_pad, "mixed/quest"}


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


def _synthetic(per_seq: dict[str, list[float]]):
    return {k: {"mean": float(np.mean(v)), "per_sequence": v} for k, v in per_seq.items()}


def test_bootstrap_tells_apart_only_what_the_data_separate():
    from longforge.analyze.analyses import compare, ordering_text

    a = np.random.default_rng(0).normal(0.175, 0.06, 100)
    # b: a shifted by 0.005 (a tenth of the spread); c: by 0.15
    sim = _synthetic({"a": list(a), "b": list(a[::-1] + 0.005), "c": list(a[:90] + 0.15)})
    cmp = compare(sim, seed=0, draws=2000)
    assert cmp["ordering"] == ["a", "b", "c"]
    (ab, bc) = cmp["adjacent_pairs"]
    assert not ab["distinguishable"] and ab["ci"][0] < 0 < ab["ci"][1]
    assert bc["distinguishable"] and bc["ci"][0] > 0
    assert ordering_text(cmp) == "a ≈ b < c"
    assert cmp["reference"] is None and cmp["versus_reference"] == {}
    vs = compare(sim, seed=0, draws=2000, reference="a")["versus_reference"]
    assert sorted(vs) == ["b", "c"] and not vs["b"]["distinguishable"] and vs["c"]["distinguishable"]
    for k in "abc":
        lo, hi = cmp["ci"][k]
        assert lo < sim[k]["mean"] < hi
    assert compare(sim, seed=0, draws=2000) == cmp  # seeded
    # a method's interval does not depend on which other outputs are compared
    assert compare({"a": sim["a"]}, seed=0, draws=2000)["ci"]["a"] == cmp["ci"]["a"]


def test_keyword_purity_and_token_weighted_domains():
    from pathlib import Path

    from longforge.analyze.analyses import domain_distribution, keyword_purity
    from longforge.analyze.data import SynthOutput

    docs = {"a": {"keyword": "k1", "source": "code", "n_tokens": 90, "hash": "a"},
            "b": {"keyword": "k2", "source": "man", "n_tokens": 5, "hash": "b"},
            "c": {"keyword": "k2", "source": "man", "n_tokens": 5, "hash": "c"},
            "d": {"keyword": None, "source": "man", "n_tokens": 10, "hash": "d"}}
    piece = lambda d, n: {"doc": d, "start": 0, "end": n}  # noqa: E731
    seqs = [{"pieces": [piece("a", 90), piece("b", 5), piece("c", 5)], "n_tokens": 100, "n_pad": 0,
             "doc_ids": ["a", "b", "c"], "sources": ["code", "man", "man"]},
            {"pieces": [piece("b", 5), piece("c", 5)], "n_tokens": 10, "n_pad": 90,
             "doc_ids": ["b", "c"], "sources": ["man", "man"]},
            {"pieces": [piece("c", 5), piece("d", 10)], "n_tokens": 15, "n_pad": 85,
             "doc_ids": ["c", "d"], "sources": ["man", "man"]},
            {"pieces": [piece("d", 10)], "n_tokens": 10, "n_pad": 90,  # no-keyword fallback
             "doc_ids": ["d"], "sources": ["man"]}]
    out = SynthOutput(Path("x"), "quest", {"context_length": 100}, seqs, docs)
    p = keyword_purity(out)
    assert p["mean"] == pytest.approx((0.9 + 1.0 + 5 / 15) / 3)
    assert p["pure_fraction"] == pytest.approx(1 / 3) and p["keywords_per_sequence"] == pytest.approx(4 / 3)
    assert (p["sequences"], p["no_keyword_sequences"]) == (3, 1)
    # sequence 1: 2 of its 3 documents are man pages, but 90 of its 100 tokens are code
    after = domain_distribution(out)["sequences_by_majority_domain"]
    assert after == pytest.approx({"code": 100 / 135, "man": 35 / 135})
    docs_no_kw = {d: {**r, "keyword": None} for d, r in docs.items()}
    assert keyword_purity(SynthOutput(Path("x"), "standard", {}, seqs, docs_no_kw)) is None


def test_keyword_coverage_and_most_frequent_keywords():
    from pathlib import Path

    from longforge.analyze.analyses import frequent_keywords, keyword_coverage
    from longforge.analyze.data import SynthOutput

    def doc(kw, kws, source):
        return {"keyword": kw, "keywords": kws, "source": source, "n_tokens": 5, "hash": "h"}

    docs = {"a": doc("latest version", ["latest version", "zlib stream"], "changelog"),
            "b": doc("latest version", ["latest version"], "copyright"),
            "c": doc("zlib stream", ["zlib stream", "latest version"], "man"),
            "d": doc("tar archive", ["tar archive"], "man"),
            "e": doc(None, [], "man")}
    out = SynthOutput(Path("x"), "quest", {}, [], docs)
    c = keyword_coverage(out)
    assert (c["documents"], c["with_keyword"], c["in_shared_keywords"]) == (5, 4, 2)
    assert c["with_keyword_share"] == 0.8 and c["in_shared_keywords_share"] == 0.4
    assert (c["keywords"], c["shared_keywords"]) == (3, 1)
    top = frequent_keywords(out, top=2)
    assert [(r["keyword"], r["documents"], r["representative_of"], r["sources"]) for r in top] == [
        ("latest version", 3, 2, 3), ("zlib stream", 2, 1, 2)]
    assert top[0]["source_shares"] == pytest.approx({"changelog": 1 / 3, "copyright": 1 / 3,
                                                     "man": 1 / 3})
    assert keyword_coverage(SynthOutput(Path("x"), "knn", {}, [], docs)) is None
    assert frequent_keywords(SynthOutput(Path("x"), "knn", {}, [], docs)) is None
