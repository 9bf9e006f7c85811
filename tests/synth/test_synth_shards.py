"""Synth with the input split once over K shards: the outputs of one shard, byte for byte, and
a duplicate id of an earlier shard accounted as one reader would."""
import json

import pytest

from longforge.runs import SettingsMismatch
from longforge.synth.pipeline import run
from test_synth_pipeline import _cfg  # the corpus there repeats an id in its last lines

FILES = ("sequences-00000.jsonl.gz", "tokens-00000.parquet")


@pytest.mark.parametrize("method", ["quest", "standard"])
def test_any_shard_count_writes_the_bytes_of_one_shard(tmp_path, method):
    one = run(_cfg(tmp_path, "one", method=method))
    for k in (2, 3, 7):
        many = run(_cfg(tmp_path, f"k{k}", method=method, num_shards=k))
        for f in FILES + (("index-00000.parquet",) if method == "quest" else ()):
            assert (tmp_path / "one" / f).read_bytes() == (tmp_path / f"k{k}" / f).read_bytes(), (k, f)
        assert {**many, "parameters": None} == {**one, "parameters": None}
        assert many["parameters"] == {**one["parameters"], "num_shards": k}


def test_an_id_repeated_by_a_later_shard_is_a_duplicate_at_its_location(tmp_path):
    m = run(_cfg(tmp_path, num_shards=3))
    [dup] = [s for s in m["skips"] if s["reason"] == "duplicate_id"]
    corpus = tmp_path / "c.jsonl"
    line = next(n for n, text in enumerate(corpus.read_text().splitlines(), start=1)
                if "duplicate id" in text)
    assert dup["location"] == f"{corpus}:{line}" and dup["id"] == "kernel/0"
    assert m["counts"]["documents_without_user_queries"] == 1  # the duplicate's was taken out
    locations = [s["location"] for s in m["skips"]]
    assert locations == sorted(locations, key=lambda loc: int(loc.rsplit(":", 1)[1]))
    work = tmp_path / "out" / "work"
    import pyarrow.parquet as pq
    shards = [pq.read_table(work / f"docs-{s:05d}.parquet").column("id").to_pylist()
              for s in range(3)]
    assert "kernel/0" in shards[0] and "kernel/0" in shards[2]  # each shard saw its own


def test_a_resume_whose_input_changed_is_refused(tmp_path):
    cfg = _cfg(tmp_path, num_shards=2)
    run(cfg)
    (tmp_path / "out" / "state" / "prepare" / "shard-00001.json").unlink()  # as if unfinished
    with open(tmp_path / "c.jsonl", "a") as fh:  # the input grows after shard 0 was finished
        fh.write(json.dumps({"id": "late", "text": "a document added later " * 400}) + "\n")
    with pytest.raises(SettingsMismatch, match=r"shards \[0\] were made from other parts"):
        run(cfg)
