"""The corpus driver and the filter, with a tiny model (records, skips, resume, filter)."""
import gzip
import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from longforge.models import tiny_model
from longforge.prolong import score as score_mod
from longforge.prolong.fast import FastScorer
from longforge.prolong.filter import filter_corpus, select
from longforge.prolong.score import ScoreSettings, read_scores, score_corpus

C = 8  # chunk size in tokens (one character = one token below)


class CharTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(ch) % 512 for ch in text]}


class CountingScorer(FastScorer):
    calls: list = []
    fail_after = None

    def perplexities(self, chunks, pi, pj):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls.append(len(chunks))
        return super().perplexities(chunks, pi, pj)


@pytest.fixture
def tiny(monkeypatch):
    scorer = CountingScorer(tiny_model("tiny-llama"))
    scorer.calls = []
    lm = SimpleNamespace(tokenizer=CharTokenizer(), model=scorer.model)
    monkeypatch.setattr(score_mod, "_model_and_scorer", lambda s: (lm, scorer))
    monkeypatch.setattr(score_mod, "check_spec", lambda spec: None)  # "tiny": the fake above
    return scorer


def _corpus(tmp_path, name="c.jsonl.gz"):
    docs = [{"id": f"d{k}", "text": "".join(chr(97 + (k * 7 + t * t) % 26) for t in range(C * n)),
             "source": "s"} for k, n in enumerate([5, 1, 3, 9, 4, 2, 6])]
    docs[1]["text"] += "xyz"  # 11 tokens: one whole chunk only -> too short
    path = tmp_path / name
    with (gzip.open(path, "wt") if name.endswith(".gz") else open(path, "w")) as fh:
        for d in docs:
            fh.write(json.dumps(d) + "\n")
        fh.write("{not json\n")  # a reader skip, accounted in the manifest
    return path


# threshold -1: every pair counts, so that the random tiny model gives distinct LDS values
SETTINGS = ScoreSettings(model="tiny", chunk_size=C, max_chunks=6, pairs=10, seed=3, threshold=-1.0)
ONE_BY_ONE = replace(SETTINGS, cross_document=False)  # one scorer call per document: countable


def test_score_records_and_manifest(tmp_path, tiny):
    m = score_corpus(_corpus(tmp_path), tmp_path / "out", SETTINGS, num_shards=2)
    recs = {r["id"]: r for r in read_scores(tmp_path / "out")}
    assert m["inputs"] == 8 and m["used"] == 6 and m["dropped_by_reason"] == {"too_short": 1}
    assert m["skipped_by_reason"] == {"invalid_json": 1}
    assert recs["d1"]["lds"] is None and recs["d1"]["skip"] == "too_short"
    assert recs["d1"]["n_tokens"] == 11
    # 9 chunks > max_chunks 6: 6 chunks sampled, 15 pairs > 10: 10 sampled
    assert recs["d3"]["n_chunks"] == 6 and recs["d3"]["pairs_scored"] == 10
    # 3 chunks: all 3 pairs scored
    assert recs["d2"]["n_chunks"] == 3 and recs["d2"]["pairs_scored"] == 3
    assert all(isinstance(r["lds"], float) for k, r in recs.items() if k != "d1")
    assert {p.name for p in (tmp_path / "out").glob("scores-*")} == {"scores-00000.jsonl",
                                                                    "scores-00001.jsonl"}


def test_scores_are_deterministic_and_parquet_works(tmp_path, tiny):
    corpus = _corpus(tmp_path)
    score_corpus(corpus, tmp_path / "a", SETTINGS)
    score_corpus(corpus, tmp_path / "b", replace(SETTINGS, fmt="parquet"), num_shards=3)
    a = sorted(read_scores(tmp_path / "a"), key=lambda r: r["id"])
    b = sorted(read_scores(tmp_path / "b"), key=lambda r: r["id"])
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["lds"] == pytest.approx(rb["lds"]) if ra["lds"] is not None else rb["lds"] is None


def test_killed_run_resumes_without_rescoring(tmp_path, tiny):
    corpus = _corpus(tmp_path)
    tiny.fail_after = 3
    with pytest.raises(KeyboardInterrupt):
        score_corpus(corpus, tmp_path / "out", ONE_BY_ONE)
    partial = tmp_path / "out" / "state" / "shard-00000.partial.jsonl"
    done_before = [json.loads(line)["id"] for line in partial.read_text().splitlines()]
    assert len(done_before) == 4  # 3 scored + the too-short one (needs no model)
    with open(partial, "a") as fh:
        fh.write('{"id": "half-writ')  # the line the killed run was writing
    tiny.fail_after, tiny.calls = None, []
    m = score_corpus(corpus, tmp_path / "out", ONE_BY_ONE)
    assert len(tiny.calls) == 3  # only the 3 documents not finished before
    assert m["used"] == 6 and m["inputs"] == 8 and not partial.exists()
    assert len(read_scores(tmp_path / "out")) == 7
    tiny.calls = []
    score_corpus(corpus, tmp_path / "out", ONE_BY_ONE)  # finished run: nothing to redo
    assert tiny.calls == []


def test_kill_after_a_shard_ends_but_before_it_is_marked_done_loses_nothing(tmp_path, tiny,
                                                                            monkeypatch):
    from longforge import executor

    corpus = _corpus(tmp_path)
    real = executor.atomic_write_json

    def killed(path, obj):
        raise KeyboardInterrupt("killed before the shard was marked done")

    monkeypatch.setattr(executor, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        score_corpus(corpus, tmp_path / "out", ONE_BY_ONE)
    assert len(tiny.calls) == 6
    monkeypatch.setattr(executor, "atomic_write_json", real)
    tiny.calls = []
    m = score_corpus(corpus, tmp_path / "out", ONE_BY_ONE)
    assert tiny.calls == [] and m["used"] == 6 and len(read_scores(tmp_path / "out")) == 7


def test_bad_options_are_refused_before_anything_is_written(tmp_path):
    for bad, field in [(dict(fmt="json"), "--format"), (dict(device="gpu"), "--device"),
                       (dict(dtype="fp8"), "dtype"), (dict(batch_tokens=4), "--batch-tokens")]:
        with pytest.raises(ValueError, match=field):
            score_corpus(_corpus(tmp_path), tmp_path / "out", replace(SETTINGS, **bad))
        assert not (tmp_path / "out" / "settings.json").exists()


def test_filter_refuses_an_unfinished_score_run(tmp_path, tiny):
    corpus = _corpus(tmp_path)
    tiny.fail_after = 2
    with pytest.raises(KeyboardInterrupt):
        score_corpus(corpus, tmp_path / "out", ONE_BY_ONE)
    with pytest.raises(ValueError, match="has not finished"):
        filter_corpus(tmp_path / "out", corpus, tmp_path / "kept", keep=0.5)


def test_resume_with_other_settings_is_refused(tmp_path, tiny):
    corpus = _corpus(tmp_path)
    score_corpus(corpus, tmp_path / "out", SETTINGS)
    with pytest.raises(ValueError, match="other settings"):
        score_corpus(corpus, tmp_path / "out", replace(SETTINGS, pairs=11))


def test_select_keep_fraction_and_threshold():
    recs = [{"id": f"d{k}", "lds": v} for k, v in enumerate([5.0, 1.0, 3.0, 2.0, 4.0])]
    recs.append({"id": "short", "lds": None, "skip": "too_short"})
    assert select(recs, keep=0.5) == ({"d0", "d4", "d2"}, 3.0)  # ceil(0.5 * 5) = 3
    assert select(recs, keep=0.2) == ({"d0"}, 5.0)
    assert select(recs, keep=0.0) == (set(), None)
    assert select(recs, threshold=2.0) == ({"d0", "d4", "d2", "d3"}, 2.0)
    with pytest.raises(ValueError):
        select(recs, keep=0.5, threshold=1.0)


def test_filter_keeps_top_half_in_input_format(tmp_path, tiny):
    corpus = _corpus(tmp_path)
    score_corpus(corpus, tmp_path / "scores", SETTINGS)
    m = filter_corpus(tmp_path / "scores", corpus, tmp_path / "kept", keep=0.5)
    out = tmp_path / "kept" / "part-00000.jsonl.gz"  # same format as the input
    kept = [json.loads(line) for line in gzip.open(out, "rt")]
    scores = sorted((r["lds"], r["id"]) for r in read_scores(tmp_path / "scores") if r["lds"] is not None)
    assert len({lds for lds, _ in scores}) == 6  # distinct, so the top 3 are well defined
    assert {d["id"] for d in kept} == {i for _, i in scores[-3:]}  # top ceil(6 / 2) = 3
    assert m["used"] == 3 and m["inputs"] == 8
    assert m["dropped_by_reason"] == {"below_cutoff": 3, "unscored_too_short": 1}
    assert m["skipped_by_reason"] == {"invalid_json": 1}
    assert json.loads((tmp_path / "kept" / "manifest.json").read_text())["used"] == 3


def test_cli_score_then_filter(tmp_path, tiny):
    from typer.testing import CliRunner

    from longforge.cli import app

    corpus = _corpus(tmp_path, "c.jsonl")
    r = CliRunner().invoke(app, ["score", str(corpus), "-o", str(tmp_path / "s"), "--quiet",
                                 "--chunk-size", str(C), "--max-chunks", "6", "--pairs", "10",
                                 "--num-shards", "2", "--format", "parquet"])
    assert r.exit_code == 0, r.output
    assert "scored 6 of 8 input documents" in r.output and "warning" not in r.output
    r = CliRunner().invoke(app, ["filter", str(corpus), "--scores", str(tmp_path / "s"), "-q",
                                 "-o", str(tmp_path / "f"), "--threshold", "-1e9"])
    assert r.exit_code == 0, r.output
    assert "kept 6 of 8" in r.output and (tmp_path / "f" / "part-00000.jsonl").exists()
    r = CliRunner().invoke(app, ["score", str(corpus), "-o", str(tmp_path / "s"),
                                 "--chunk-size", "9"])
    assert r.exit_code == 1 and "error:" in r.output and "other settings" in r.output


def test_old_score_and_filter_spellings_warn_and_work(tmp_path, tiny):
    from typer.testing import CliRunner

    from longforge.cli import app

    corpus = _corpus(tmp_path, "c.jsonl")
    r = CliRunner().invoke(app, ["-q", "score", "-i", str(corpus), "-o", str(tmp_path / "s"),
                                 "--chunk-size", str(C), "--max-chunks", "6", "--pairs", "10"])
    assert r.exit_code == 0, r.output
    assert "--input/-i is deprecated" in r.output and "scored 6 of 8" in r.output
    r = CliRunner().invoke(app, ["-q", "filter", "--scores", str(tmp_path / "s"), "--corpus",
                                 str(corpus), "-o", str(tmp_path / "f")])
    assert r.exit_code == 0, r.output
    assert "--corpus is deprecated" in r.output and "kept 3 of 8" in r.output


def test_demo_stage_with_a_tiny_model(tmp_path):
    from longforge.prolong.demo import prolong_stage

    lm = SimpleNamespace(model=tiny_model("tiny-llama"), tokenizer=CharTokenizer(), spec="tiny-llama")
    line = prolong_stage(tmp_path, lm, max_chunks=3)
    m = json.loads((tmp_path / "prolong" / "scores" / "manifest.json").read_text())
    assert m["used"] == m["inputs"] >= 5 and "kept" in line
    assert (tmp_path / "prolong" / "kept" / "part-00000.jsonl").exists()


def test_short_documents_batched_together_give_the_numbers_of_one_by_one(tmp_path):
    from longforge.prolong.reference import ReferenceScorer
    from longforge.prolong.score import score_documents

    model = tiny_model("tiny-llama")
    docs = [(f"d{k}", [(k * 31 + t * 7) % 512 for t in range(C * n)], "s")
            for k, n in enumerate([2, 3, 1, 5, 4, 2])]  # d2: one chunk, too short
    for scorer in (FastScorer(model, batch_tokens=4096), ReferenceScorer(model, batch_size=3)):
        calls = []
        real = scorer.perplexities
        scorer.perplexities = lambda *a: calls.append(a) or real(*a)
        alone = [score_documents([d], scorer, SETTINGS)[0] for d in docs]
        together = score_documents(docs, scorer, SETTINGS)
        assert len(calls) == 5 + 1  # one call per scored document, then one for all of them
        chunks, pi, pj = calls[-1]
        single, pair = real(chunks, pi, pj)
        one = [real(*c) for c in calls[:-1]]
        # a batch changes where a chunk is, not what it computes: equal up to float rounding
        np.testing.assert_allclose(single, np.concatenate([s for s, _ in one]), rtol=1e-5)
        np.testing.assert_allclose(pair, np.concatenate([p for _, p in one]), rtol=1e-5)
        for a, t in zip(alone, together):  # strength = 1 - pair / single amplifies the rounding
            assert {k: v for k, v in a.items() if not isinstance(v, float)} == \
                {k: v for k, v in t.items() if not isinstance(v, float)}
            assert {k: pytest.approx(v, rel=1e-3) for k, v in a.items() if isinstance(v, float)} == \
                {k: v for k, v in t.items() if isinstance(v, float)}
    assert alone[2]["skip"] == "too_short" and all(r["lds"] is not None for r in alone[:2])


def test_groups_depend_only_on_the_documents():
    from longforge.prolong.score import document_groups

    s = replace(SETTINGS, batch_tokens=6 * C)  # 6 chunks per forward
    sizes = [2, 3, 1, 7, 2, 2, 2, 0]  # chunks (1 and 0: too short, no chunk scored)
    items = [(k, [0] * (C * n)) for k, n in enumerate(sizes)]
    assert [[k for k, _ in g] for g in document_groups(items, s)] == [[0, 1, 2], [3], [4, 5, 6, 7]]
    one_by_one = replace(s, cross_document=False)
    assert [[k for k, _ in g] for g in document_groups(items, one_by_one)] == [[k] for k in range(8)]


def test_a_resumed_batched_run_writes_the_bytes_of_an_uninterrupted_one(tmp_path, tiny):
    corpus = _corpus(tmp_path, "c.jsonl")
    s = replace(SETTINGS, batch_tokens=8 * C)
    score_corpus(corpus, tmp_path / "whole", s)
    tiny.calls, tiny.fail_after = [], 1
    with pytest.raises(KeyboardInterrupt):
        score_corpus(corpus, tmp_path / "out", s)
    tiny.fail_after = None
    score_corpus(corpus, tmp_path / "out", s)
    assert ((tmp_path / "out" / "scores-00000.jsonl").read_bytes()
            == (tmp_path / "whole" / "scores-00000.jsonl").read_bytes())


def test_an_id_repeated_by_a_later_shard_is_dropped_from_its_scores(tmp_path, tiny):
    corpus = _corpus(tmp_path, "c.jsonl")
    with open(corpus, "a") as fh:
        fh.write(json.dumps({"id": "d0", "text": "z" * (C * 3)}) + "\n")
    one = score_corpus(corpus, tmp_path / "one", SETTINGS)
    m = score_corpus(corpus, tmp_path / "out", SETTINGS, num_shards=3)
    assert m["skipped_by_reason"] == one["skipped_by_reason"] == {"duplicate_id": 1,
                                                                   "invalid_json": 1}
    assert [s["location"] for s in m["skips"]] == [s["location"] for s in one["skips"]]
    assert (m["used"], m["dropped_by_reason"], m["scored_tokens"]) == (
        one["used"], one["dropped_by_reason"], one["scored_tokens"])
    recs = read_scores(tmp_path / "out")
    assert sorted(r["id"] for r in recs) == sorted(r["id"] for r in read_scores(tmp_path / "one"))
    again = score_corpus(corpus, tmp_path / "out", SETTINGS, num_shards=3)  # a finished run
    assert {**again, "seconds_last_run_per_shard": 0} == {**m, "seconds_last_run_per_shard": 0}


def test_filter_keeps_the_top_fraction_of_each_length_bucket(tmp_path, tiny):
    from longforge.prolong.filter import bucket_of, parse_buckets, select_by_length

    recs = [{"id": f"s{k}", "lds": v, "n_tokens": 100, "n_chunks": 2} for k, v in enumerate([1, 2, 3, 4])]
    recs += [{"id": f"l{k}", "lds": v, "n_tokens": 5000, "n_chunks": 40} for k, v in enumerate([50, 60])]
    kept, report = select_by_length(recs, 0.5, [1024])
    assert kept == {"s3", "s2", "l1"}  # a global top half would keep l0, l1, s3
    assert report == {"0-1023 tokens": {"scored": 4, "kept": 2, "lds_cutoff": 3},
                      "1024+ tokens": {"scored": 2, "kept": 1, "lds_cutoff": 60}}
    assert bucket_of(recs[0], "chunks") == "2 chunks" and parse_buckets(["chunks"]) == "chunks"
    for bad in (["0"], ["4096", "1024"], ["many"]):
        with pytest.raises(ValueError, match="--length-buckets"):
            parse_buckets(bad)
    corpus = _corpus(tmp_path)
    score_corpus(corpus, tmp_path / "scores", SETTINGS)
    m = filter_corpus(tmp_path / "scores", corpus, tmp_path / "kept", keep=0.5,
                      length_buckets="chunks")
    assert m["lds_cutoff"] is None and m["used"] == sum(b["kept"] for b in m["buckets"].values())
    assert all(b["kept"] == -(-b["scored"] // 2) for b in m["buckets"].values())
    with pytest.raises(ValueError, match="goes with --keep"):
        filter_corpus(tmp_path / "scores", corpus, tmp_path / "t", threshold=1.0,
                      length_buckets=[1024])
