import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longforge.corpus import (CorpusError, Manifest, ShardWriter, read_corpus, read_documents)
from longforge.corpus.document import Document, Skip


def _write_jsonl(path, lines: list[bytes]):
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as fh:
        for line in lines:
            fh.write(line + b"\n")


BAD_LINES = [
    b'{"id": "a", "text": "first good document", "source": "x"}',
    b'{"id": "b", "text": "broken json',                     # line 2: invalid JSON
    b'{"id": "c"}',                                          # line 3: missing text
    b'{"id": "d", "text": 42}',                              # line 4: text not a string
    b'{"id": "e", "text": "caf\xe9 latin-1 bytes"}',         # line 5: not UTF-8
    b'{"id": "f", "text": "   "}',                           # line 6: empty
    b'{"id": "a", "text": "same id as line 1"}',             # line 7: duplicate id
    b'["not", "an", "object"]',                              # line 8: not an object
    b'{"id": "g", "text": "second good document"}',
]


@pytest.mark.parametrize("name", ["bad.jsonl", "bad.jsonl.gz"])
def test_bad_jsonl_inputs_are_reported_and_nothing_is_lost(tmp_path, name):
    path = tmp_path / name
    _write_jsonl(path, BAD_LINES)
    items = list(read_corpus(path))
    assert len(items) == len(BAD_LINES)  # one verdict per input record
    docs = [i for i in items if isinstance(i, Document)]
    skips = {int(s.location.rsplit(":", 1)[1]): s for s in items if isinstance(s, Skip)}
    assert [d.id for d in docs] == ["a", "g"]
    assert {k: v.reason for k, v in skips.items()} == {
        2: "invalid_json", 3: "missing_field", 4: "wrong_type", 5: "undecodable",
        6: "empty", 7: "duplicate_id", 8: "invalid_record"}
    assert all(str(path) in s.location for s in skips.values())
    assert skips[3].field == "text" and skips[4].field == "text" and skips[7].field == "id"
    assert "already used" in skips[7].detail and "column" in skips[2].detail


def test_manifest_accounts_for_every_input(tmp_path):
    path = tmp_path / "bad.jsonl"
    _write_jsonl(path, BAD_LINES)
    m = Manifest()
    docs = list(read_documents(path, m))
    d = m.to_dict()
    assert d["inputs"] == len(BAD_LINES) == len(docs) + d["skipped"]
    assert d["skipped_by_reason"]["duplicate_id"] == 1
    assert {s["location"] for s in d["skips"]} == {f"{path}:{n}" for n in range(2, 9)}


def test_shards_partition_the_input(tmp_path):
    path = tmp_path / "c.jsonl"
    _write_jsonl(path, [json.dumps({"id": str(i), "text": f"doc {i}"}).encode() for i in range(10)]
                 + [b"{oops"])
    seen, skipped = [], 0
    for shard in range(3):
        m = Manifest()
        seen += [d.id for d in read_documents(path, m, shard=shard, num_shards=3)]
        skipped += len(m.skips)
    assert sorted(seen, key=int) == [str(i) for i in range(10)] and skipped == 1


def test_parquet_and_text_folders(tmp_path):
    pq.write_table(pa.table({"id": ["p1", "p2", "p3"], "text": ["one", None, "three"],
                             "source": ["s", "s", "t"]}), tmp_path / "c.parquet")
    items = list(read_corpus(tmp_path / "c.parquet"))
    assert isinstance(items[1], Skip) and items[1].location.endswith("c.parquet:2")
    assert items[1].reason == "wrong_type" and items[2].source == "t"

    root = tmp_path / "folder"
    (root / "law").mkdir(parents=True)
    (root / "law" / "gpl.txt").write_text("GNU GENERAL PUBLIC LICENSE")
    (root / "top.txt").write_text("top level")
    (root / "law" / "bin.txt").write_bytes(b"\xff\xfe\x00binary")
    docs = {str(i.id if isinstance(i, Document) else i.location): i for i in read_corpus(root)}
    assert docs["law/gpl.txt"].source == "law" and docs["top.txt"].source is None
    assert any(isinstance(v, Skip) and v.reason == "undecodable" for v in docs.values())


def test_missing_and_unknown_inputs_fail_clearly(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        list(read_corpus(tmp_path / "nope.jsonl"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(CorpusError, match="unknown corpus format"):
        list(read_corpus(tmp_path / "x.csv"))


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "parquet"])
def test_shard_writer_is_atomic_and_round_trips(tmp_path, fmt):
    docs = [Document(id=f"d{i}", text=f"text {i}", source="s") for i in range(5)]
    with ShardWriter(tmp_path, prefix="out", shard=3, fmt=fmt) as w:
        for d in docs:
            w.write(d)
        assert not w.path.exists()  # not visible under its final name while being written
    assert w.path.name == f"out-00003.{fmt}"
    back = [i for i in read_corpus(w.path)]
    assert [d.id for d in back] == [d.id for d in docs] and back[0].source == "s"

    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, prefix="fail", fmt=fmt) as w2:
            w2.write(docs[0])
            raise RuntimeError("killed")
    assert not w2.path.exists() and not list(tmp_path.glob(".fail*"))


def test_gzip_output_is_byte_identical(tmp_path):
    docs = [Document(id="a", text="x")]
    with ShardWriter(tmp_path / "1", fmt="jsonl.gz") as w1:
        w1.write(docs[0])
    with ShardWriter(tmp_path / "2", fmt="jsonl.gz") as w2:
        w2.write(docs[0])
    assert w1.path.read_bytes() == w2.path.read_bytes()
