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


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "parquet"])
def test_documents_keep_source_and_meta_whatever_the_first_one_has(tmp_path, fmt):
    docs = [Document("a", "x"), Document("b", "y", source="lic", meta={"k": 1}),
            *[Document(f"c{i}", "z", meta={f"key{i}": [i, "v"]}) for i in range(1100)]]
    with ShardWriter(tmp_path, fmt=fmt) as w:  # > 1024 records: two Parquet batches
        for d in docs:
            w.write(d)
    back = list(read_corpus(w.path))
    assert [(d.id, d.source, d.meta) for d in back] == [(d.id, d.source, d.meta) for d in docs]


def test_parquet_records_of_other_fields_are_kept_or_refused_clearly(tmp_path):
    with ShardWriter(tmp_path, prefix="ok", fmt="parquet") as w:
        w.write({"a": 1})
        w.write({"a": 2, "b": "x"})  # same batch: a column of its own, null for the first
    assert pq.read_table(w.path).to_pylist() == [{"a": 1, "b": None}, {"a": 2, "b": "x"}]
    with pytest.raises(ValueError, match=r"record 1025 has fields \['c'\]"):
        with ShardWriter(tmp_path, prefix="bad", fmt="parquet") as w:
            for i in range(1024):
                w.write({"a": i})
            w.write({"a": 0, "c": "new"})
    assert not list(tmp_path.glob("*bad*"))  # no temporary file left behind


def test_unreadable_files_are_reported_and_the_next_file_is_read(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    good = b'{"id": "a", "text": "first"}\n{"id": "b", "text": "second"}\n' * 2000
    whole = gzip.compress(good.replace(b'"a"', b'"a0"', 1))
    (root / "1-truncated.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    (root / "2-not-gzip.jsonl.gz").write_bytes(b"plain text, not gzip")
    (root / "3-corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    _write_jsonl(root / "4-fine.jsonl", [b'{"id": "z", "text": "after the broken ones"}'])
    items = list(read_corpus(root))
    skips = [i for i in items if isinstance(i, Skip)]
    assert [s.reason for s in skips if s.reason == "unreadable"] == ["unreadable"] * 3
    trunc = next(s for s in skips if "1-truncated" in s.location)
    assert int(trunc.location.rsplit(":", 1)[1]) > 1  # where reading stopped
    assert items[-1].id == "z"  # the run went on
    assert "2-not-gzip.jsonl.gz:1" in str(skips) and "3-corrupt.parquet:1" in str(skips)


def test_parquet_string_that_is_not_utf8_is_skipped_with_its_field(tmp_path):
    import numpy as np

    data, offsets = b"okcaf\xe9", np.array([0, 2, 6], dtype=np.int32)
    text = pa.Array.from_buffers(pa.string(), 2, [None, pa.py_buffer(offsets.tobytes()),
                                                  pa.py_buffer(data)])
    pq.write_table(pa.table({"id": ["p1", "p2"], "text": text}), tmp_path / "c.parquet")
    items = list(read_corpus(tmp_path / "c.parquet"))
    assert items[0].text == "ok"
    assert items[1].reason == "undecodable" and items[1].field == "text"
    assert items[1].location.endswith("c.parquet:2")


def test_folders_read_other_files_as_text_and_ids_do_not_collide(tmp_path):
    root = tmp_path / "f"
    for sub in ("a", "b"):
        (root / sub).mkdir(parents=True)
        _write_jsonl(root / sub / "data.jsonl", [b'{"text": "no id here"}'])
    (root / "a" / "tool.py").write_text("print('source code is text')\n")
    (root / "a" / "ls.1").write_text(".TH LS 1\n")
    (root / "a" / "blob.bin").write_bytes(b"\x00\xff\x00\xfe")
    items = list(read_corpus(root))
    docs = {d.id: d for d in items if isinstance(d, Document)}
    assert {"a/data.jsonl:1", "b/data.jsonl:1", "a/tool.py", "a/ls.1"} <= set(docs)
    assert docs["a/tool.py"].source == "a"
    assert [s.reason for s in items if isinstance(s, Skip)] == ["undecodable"]
