"""End to end with user-supplied queries (no model needed) and the real Gemma tokenizer."""
import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from longforge.synth import prepare as prepare_mod
from longforge.synth.config import SynthConfig
from longforge.runs import SettingsMismatch
from longforge.synth.pipeline import run

TOPICS = {
    "kernel": "How does the kernel schedule realtime threads?",
    "licence": "What does the GNU General Public License require?",
    "parser": "How does the JSON parser handle nested arrays?",
}


def _corpus(path: Path, n_per_topic: int = 6) -> Path:
    lines = []
    for t, q in TOPICS.items():
        for i in range(n_per_topic):
            text = f"{t} document {i}. " + " ".join(f"{t}{j}" for j in range(40 + 7 * i))
            lines.append(json.dumps({"id": f"{t}/{i}", "text": text, "source": t, "queries": [q]}))
    lines.append(json.dumps({"id": "noq/0", "text": "a document without queries", "source": "x"}))
    lines.append(json.dumps({"id": "nokw/0", "text": "short one", "source": "x",
                             "queries": "What is it?"}))
    lines += ["{not json", json.dumps({"id": "empty", "text": "  "}),
              json.dumps({"id": "kernel/0", "text": "duplicate id"}), json.dumps({"id": "n"})]
    path.write_text("\n".join(lines) + "\n")
    return path


def _cfg(tmp_path, out="out", **kw):
    base = dict(inputs=[str(_corpus(tmp_path / "c.jsonl"))], output=tmp_path / out,
                method="quest", query_source="user", context_length=256, seed=0,
                group_boundary="pad", boundary="carry", tokenized=True)
    return SynthConfig(**{**base, **kw})


def _seqs(out: Path):
    return [json.loads(x) for x in gzip.open(out / "sequences-00000.jsonl.gz", "rt")]


def test_quest_sequences_share_keyword_and_account_for_every_input(tmp_path):
    m = run(_cfg(tmp_path))
    seqs = _seqs(tmp_path / "out")
    assert m["inputs"] == 24 and m["read"] == 20 and m["skipped"] == 4
    assert m["skipped_by_reason"] == {"duplicate_id": 1, "empty": 1, "invalid_json": 1,
                                      "missing_field": 1}
    assert m["dropped_by_reason"] == {"no_keyword": 2}
    assert m["used"] + sum(m["dropped_by_reason"].values()) == m["read"]
    assert m["counts"]["documents_without_user_queries"] == 1
    kw_of = {}
    for r in pq.read_table(tmp_path / "out" / "index-00000.parquet").to_pylist():
        for d in r["doc_ids"]:
            kw_of[d] = r["keyword"]
    for s in seqs:
        assert len(s["doc_ids"]) == len(set(s["doc_ids"]))
        assert len({kw_of[d] for d in s["doc_ids"]}) == 1
        assert s["n_tokens"] + s["n_pad"] == 256
    toks = pq.read_table(tmp_path / "out" / "tokens-00000.parquet").to_pylist()
    assert len(toks) == len(seqs) and all(len(t["input_ids"]) == 256 for t in toks)


def test_no_keyword_standard_policy_packs_them(tmp_path):
    m = run(_cfg(tmp_path, no_keyword="standard"))
    assert m["dropped_by_reason"] == {} and m["used"] == m["read"]


def _shared_corpus(path: Path) -> Path:
    """Documents whose queries name a shared subject and one of their own: drawn uniformly,
    about half of them get the keyword no other document holds."""
    lines = []
    for i in range(12):
        topic = ["kernel scheduler", "json parser", "gnu license"][i % 3]
        lines.append(json.dumps({"id": f"d{i:02d}", "text": f"document {i} " + "word " * 30,
                                 "source": topic.split()[0],
                                 "queries": [f"what is the {topic}?",
                                             f"what is unique identifier{i}x{i}"]}))
    lines.append(json.dumps({"id": "alone", "text": "a lonely document " * 5, "source": "x",
                             "queries": ["which lonely zebra crossing"]}))
    lines.append(json.dumps({"id": "d00", "text": "a repeated id", "source": "x",
                             "queries": ["which lonely zebra crossing"]}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _draws(tmp_path, corpus: Path, shards: int, draws: tuple[str, ...]) -> dict:
    """Quest over ``corpus`` with each ``--keyword-draw`` in ``draws`` (user queries): per draw,
    the manifest and the keyword coverage `longforge analyze` reports."""
    from longforge.analyze.analyses import keyword_coverage
    from longforge.analyze.data import load_output

    cfg = dict(inputs=[str(corpus)], method="quest", query_source="user", context_length=128,
               seed=0, no_keyword="standard", num_shards=shards)
    out = {}
    for draw in draws:
        m = run(SynthConfig(output=tmp_path / draw, keyword_draw=draw, **cfg))
        out[draw] = (m, keyword_coverage(load_output(tmp_path / draw)))
    return out


@pytest.mark.parametrize("shards", [1, 3])
def test_shared_draw_picks_keywords_other_documents_hold(tmp_path, shards):
    res = _draws(tmp_path, _shared_corpus(tmp_path / "c.jsonl"), shards, ("any", "shared"))
    m, cov = res["shared"]
    index = {r["keyword"]: r["doc_ids"]
             for r in pq.read_table(tmp_path / "shared" / "index-00000.parquet").to_pylist()}
    # every document with a shared candidate draws one; "alone" has none and keeps its own
    assert sorted(index) == ["gnu license", "json parser", "kernel scheduler",
                             "lonely zebra crossing"]
    assert [len(index[k]) for k in sorted(index)] == [4, 4, 4, 1]
    assert m["quest"]["keyword_draw"] == "shared" and m["quest"]["documents_without_keyword"] == 0
    assert m["read"] == 13 and m["used"] + sum(m["dropped_by_reason"].values()) == 13
    assert (cov["with_keyword"], cov["in_shared_keywords"], cov["keywords"]) == (13, 12, 4)
    # the paper's draw (any survivor) leaves some documents in keywords of their own
    paper, cov = res["any"]
    assert cov["with_keyword"] == 13 and cov["in_shared_keywords"] < 12 and cov["keywords"] > 4
    assert paper["quest"]["keyword_draw"] == "any"


def test_join_singletons_moves_lonely_documents_to_a_drawn_keyword():
    from longforge.synth.pipeline import join_singletons

    ids = ["a", "b", "c", "d", "e"]
    drawn = ["k1", "k2", "k3", None, "k5"]
    cands = [["k1", "k2"], ["k2", "k1"], ["k3", "k4"], [], ["k5", "k2"]]
    # a (alone on k1) joins k2, which b drew; b then shares k2 and stays; c's other candidate
    # nobody drew; d has none; e (alone on k5) joins k2 as well
    assert join_singletons(ids, drawn, cands, 0) == ["k2", "k2", "k3", None, "k2"]
    # a document that already shares its keyword never moves
    assert join_singletons(["a", "b"], ["k1", "k1"], [["k1", "k2"], ["k1", "k2"]], 0) == ["k1", "k1"]


def _pairs_corpus(path: Path) -> Path:
    """Pairs of documents whose queries name the same two subjects: drawn independently, the
    two of a pair often take different ones and each is left alone."""
    lines = []
    for p in range(8):
        for j in range(2):
            lines.append(json.dumps({"id": f"p{p}{j}", "text": f"pair {p} " + "word " * 30,
                                     "source": f"s{p}",
                                     "queries": [f"what is the red{p} apple{p}?",
                                                 f"what is the green{p} pear{p}?"]}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("shards", [1, 3])
def test_join_draw_pairs_documents_the_shared_draw_leaves_alone(tmp_path, shards):
    res = _draws(tmp_path, _pairs_corpus(tmp_path / "c.jsonl"), shards, ("shared", "join"))
    (_, shared), (m, joined) = res["shared"], res["join"]
    assert shared["in_shared_keywords"] < 16            # some pairs split under the shared draw
    assert (joined["with_keyword"], joined["in_shared_keywords"], joined["keywords"]) == (16, 16, 8)
    assert m["quest"]["keyword_draw"] == "join" and m["used"] == 16


def test_same_seed_same_bytes_other_seed_other_output(tmp_path):
    run(_cfg(tmp_path, "a", group_boundary="mix"))
    run(_cfg(tmp_path, "b", group_boundary="mix"))
    run(_cfg(tmp_path, "c", group_boundary="mix", seed=1))
    for f in ("sequences-00000.jsonl.gz", "tokens-00000.parquet", "index-00000.parquet",
              "manifest.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert ((tmp_path / "a" / "sequences-00000.jsonl.gz").read_bytes()
            != (tmp_path / "c" / "sequences-00000.jsonl.gz").read_bytes())


def test_resume_after_a_killed_run_redoes_only_unfinished_shards(tmp_path, monkeypatch):
    real = prepare_mod._Prepare.run
    calls = []

    def dies_on_shard_1(self):
        calls.append(self.shard)
        if self.shard == 1 and len(calls) <= 2:
            raise KeyboardInterrupt("killed")
        return real(self)

    monkeypatch.setattr(prepare_mod._Prepare, "run", dies_on_shard_1)
    cfg = _cfg(tmp_path, num_shards=2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not list((tmp_path / "out").glob("sequences-*"))
    run(cfg)
    assert calls == [0, 1, 1]  # shard 0 was not redone
    monkeypatch.setattr(prepare_mod._Prepare, "run", real)
    run(_cfg(tmp_path, "fresh", num_shards=2))
    assert ((tmp_path / "out" / "sequences-00000.jsonl.gz").read_bytes()
            == (tmp_path / "fresh" / "sequences-00000.jsonl.gz").read_bytes())
    with pytest.raises(SettingsMismatch):
        run(_cfg(tmp_path, num_shards=3))


@pytest.mark.parametrize("method", ["standard", "longdoc"])
def test_baselines_account_for_every_document(tmp_path, method):
    m = run(_cfg(tmp_path, method=method, context_length=64, group_boundary=None))
    assert m["used"] + sum(m["dropped_by_reason"].values()) == m["read"] == 20
    seqs = _seqs(tmp_path / "out")
    if method == "longdoc":
        assert all(len(s["doc_ids"]) == 1 for s in seqs)
        assert m["dropped_by_reason"] == {"shorter_than_context": 2}


def test_knn_groups_and_iclm_walks_through_similar_documents(tmp_path):
    topic = lambda d: d.split("/")[0]
    m = run(_cfg(tmp_path, "knn", method="knn", context_length=512, knn_k=5))
    assert m["used"] + sum(m["dropped_by_reason"].values()) == m["read"]
    groups = [s["doc_ids"] for s in _seqs(tmp_path / "knn") if len(s["doc_ids"]) > 1]
    assert sum(len({topic(d) for d in g}) == 1 for g in groups) >= 0.7 * len(groups)
    # ICLM: one walk can cross topics once a topic is used up, but each step goes to a
    # nearest unvisited neighbour, so consecutive documents mostly share their topic.
    m = run(_cfg(tmp_path, "iclm", method="iclm", context_length=4096, iclm_k=8,
                 iclm_dup_threshold=1.01))
    assert m["used"] == m["read"]
    order = [d for s in _seqs(tmp_path / "iclm") for d in s["doc_ids"]]
    pairs = list(zip(order, order[1:]))
    # 5 topics (3 + two odd documents): at least 4 changes of topic, allow one more
    assert sum(topic(a) != topic(b) for a, b in pairs) <= 5
    # the synthetic documents of a topic are near-duplicates: the default threshold drops some
    m = run(_cfg(tmp_path, "dedup", method="iclm", context_length=4096, iclm_k=8))
    assert m["dropped_by_reason"].get("near_duplicate", 0) > 0
    assert m["used"] + sum(m["dropped_by_reason"].values()) == m["read"]


@pytest.mark.parametrize("bad, option", [
    (dict(boundary="wrap"), "--boundary"), (dict(group_boundary="none"), "--group-boundary"),
    (dict(fmt="csv"), "--format"), (dict(split_ratio=1.5), "--split-ratio"),
    (dict(split_ratio=-0.1), "--split-ratio"), (dict(index_kind="hnsw"), "--index-kind"),
    (dict(knn_k=0), "--knn-k"), (dict(batch_size=0), "--batch-size"),
    (dict(iclm_k=0), "--iclm-k"), (dict(max_new_tokens=0), "--max-new-tokens"),
    (dict(num_shards=0), "--num-shards"), (dict(max_repeats=0), "--max-repeats"),
    (dict(min_score=float("nan")), "--min-score"), (dict(context_length=1), "--context-length"),
    (dict(keyword_draw="weighted"), "--keyword-draw"),
    (dict(keyword_draw="shared", method="standard"), "--keyword-draw"),
    (dict(keyword_draw="join", method="knn"), "--keyword-draw"),
])
def test_bad_options_fail_at_construction_naming_the_option(tmp_path, bad, option):
    with pytest.raises(ValueError, match=option):
        _cfg(tmp_path, **bad)


def test_cli_refuses_a_bad_option_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from longforge.cli import app

    res = CliRunner().invoke(app, ["synth", str(_corpus(tmp_path / "c.jsonl")), "-o",
                                   str(tmp_path / "out"), "--format", "csv"])
    assert res.exit_code != 0 and "--format" in res.output
    assert not (tmp_path / "out").exists()


def test_malformed_user_queries_are_listed_with_their_location(tmp_path):
    good = [json.dumps({"id": f"g/{i}", "text": f"kernel text {i} " * 20, "source": "g",
                        "queries": [TOPICS["kernel"]]}) for i in range(3)]
    bad = [json.dumps({"id": "int", "text": "one", "queries": 5}),
           json.dumps({"id": "mixed", "text": "two", "queries": ["How do parsers work?", 3]}),
           json.dumps({"id": "empty", "text": "three", "queries": []}),
           json.dumps({"id": "blank", "text": "four", "queries": ["", "  "]}),
           json.dumps({"id": "missing", "text": "five"})]
    (tmp_path / "q.jsonl").write_text("\n".join(good + bad) + "\n")
    m = run(_cfg(tmp_path, inputs=[str(tmp_path / "q.jsonl")], no_keyword="drop"))
    issues = {i["id"]: i for i in m["quest"]["query_issues"]}
    assert sorted(issues) == ["blank", "empty", "int", "mixed"]
    assert issues["int"]["location"].endswith("q.jsonl:4") and issues["int"]["field"] == "queries"
    assert issues["int"]["reason"] == issues["mixed"]["reason"] == "invalid_user_queries"
    assert issues["empty"]["reason"] == issues["blank"]["reason"] == "empty_user_queries"
    assert "position 1" in issues["mixed"]["detail"]
    c = m["counts"]
    assert (c["documents_with_invalid_user_queries"], c["documents_with_empty_user_queries"],
            c["documents_without_user_queries"]) == (2, 2, 1)
    assert m["dropped_by_reason"] == {"no_keyword": 5}


@pytest.mark.parametrize("method, boundary, group_boundary", [
    ("quest", b, g) for b in ("carry", "truncate", "pad") for g in ("mix", "pad")] + [
    ("standard", "carry", "mix"), ("standard", "truncate", "mix"), ("longdoc", "carry", None),
    ("longdoc", "truncate", None)])
def test_every_document_is_packed_or_dropped_with_a_reason(tmp_path, method, boundary,
                                                           group_boundary):
    m = run(_cfg(tmp_path, method=method, boundary=boundary, group_boundary=group_boundary,
                 context_length=96))
    assert "not_packed" not in m["dropped_by_reason"]
    assert m["used"] + sum(m["dropped_by_reason"].values()) == m["read"] == 20
    assert set(m["dropped_documents"].values()) <= {"no_keyword", "last_partial_sequence",
                                                    "shorter_than_context"}
    if method == "quest" and (boundary, group_boundary) == ("carry", "mix"):
        # carry loses no token but those of the last partial sequence, which are counted
        q = m["quest"]
        assert q["long_tokens"] + q["short_output_tokens"] == (
            m["sequences"] * 96 + m["tail_tokens_dropped"])
        assert m["tail_tokens_dropped"] > 0 and m["pad_tokens"] == 0
    if "pad" in (boundary, group_boundary):
        assert m["tail_tokens_dropped"] == 0


def test_a_document_lost_by_a_method_is_an_internal_error(tmp_path, monkeypatch):
    from longforge.synth import baselines
    from longforge.synth.pipeline import AccountingError

    real = baselines.standard_groups
    monkeypatch.setattr(baselines, "standard_groups",
                        lambda ids, seed: ([real(ids, seed)[0][1:]], {}))  # loses one
    with pytest.raises(AccountingError, match="neither packed nor dropped"):
        run(_cfg(tmp_path, method="standard"))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_rerun_with_other_packing_or_format_is_refused(tmp_path):
    run(_cfg(tmp_path))
    with pytest.raises(SettingsMismatch, match=r"context_length: 256 there, 512 now"):
        run(_cfg(tmp_path, context_length=512))
    with pytest.raises(SettingsMismatch, match=r"fmt: 'jsonl.gz' there, 'parquet' now"):
        run(_cfg(tmp_path, fmt="parquet"))
    with pytest.raises(SettingsMismatch, match="boundary"):
        run(_cfg(tmp_path, boundary="pad"))
    m = run(_cfg(tmp_path, workers=2, doc_batch=4))  # how it runs, not what it writes: resumes
    assert m["files"] == {"sequences": "sequences-00000.jsonl.gz",
                          "tokens": "tokens-00000.parquet", "index": "index-00000.parquet"}
    assert [p.name for p in (tmp_path / "out").glob("sequences-*")] == ["sequences-00000.jsonl.gz"]
