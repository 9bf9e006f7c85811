"""End to end with user-supplied queries (no model needed) and the real Gemma tokenizer."""
import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from longforge.synth import prepare as prepare_mod
from longforge.synth.config import SynthConfig
from longforge.synth.pipeline import ConfigMismatch, run

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
    with pytest.raises(ConfigMismatch):
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
