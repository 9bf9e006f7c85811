"""Split readers: K shards read the input once in total, in input order, with true file:line
locations, whatever the formats and the number of shards."""
import gzip
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longforge.corpus import Manifest, input_order, plan_shards, read_corpus, read_documents
from longforge.corpus import readers
from longforge.corpus.document import Document


def _noise(rng, n: int) -> str:
    return "".join(rng.choice("abcdefghij klmnop") for _ in range(n))


def _mixed_corpus(root):
    """A folder: a plain JSONL file with blank lines, bad lines and id-less records; a gzipped
    one; a Parquet file of 8 row groups; a text file."""
    rng = random.Random(0)
    lines = []
    for i in range(400):
        r = rng.random()
        if r < 0.05:
            lines.append("")
        elif r < 0.08:
            lines.append("{not json")
        else:
            rec = {"text": _noise(rng, rng.randint(5, 300))}
            if rng.random() > 0.1:
                rec["id"] = f"a{i}"
            lines.append(json.dumps(rec))
    (root / "a.jsonl").write_text("\n".join(lines) + "\n")
    with gzip.open(root / "b.jsonl.gz", "wt") as fh:
        for i in range(40):
            fh.write(json.dumps({"id": f"b{i}", "text": "gz " * 30}) + "\n")
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(320)],
                             "text": [_noise(rng, rng.randint(50, 400)) for _ in range(320)]}),
                   root / "c.parquet", row_group_size=40)
    (root / "d.txt").write_text("a plain text document")
    return root


def _verdicts(items):
    return [(type(x).__name__, x.location, x.id, getattr(x, "reason", None)) for x in items]


@pytest.mark.parametrize("k", [2, 3, 5, 8, 13, 40])
def test_shards_read_every_record_once_in_input_order(tmp_path, k):
    root = _mixed_corpus(tmp_path)
    want = _verdicts(read_corpus(root))
    plan = plan_shards(root, k)
    got = [v for s in range(k) for v in _verdicts(read_corpus(root, parts=plan[s]))]
    assert got == want  # the same records, skips and file:line locations, in the same order
    spans = {f: sum(1 for s in range(k) for p in plan[s] if p.path.endswith(f))
             for f in ("a.jsonl", "b.jsonl.gz", "c.parquet", "d.txt")}
    assert spans["b.jsonl.gz"] == spans["d.txt"] == 1  # whole files
    assert spans["c.parquet"] > 1 and (k < 3 or spans["a.jsonl"] > 1)  # split


def test_each_record_is_parsed_by_one_shard_only(tmp_path, monkeypatch):
    root = _mixed_corpus(tmp_path)
    parsed = []
    real = readers._from_record
    monkeypatch.setattr(readers, "_from_record",
                        lambda rec, loc, fields: parsed.append(loc) or real(rec, loc, fields))
    n = sum(1 for _ in read_corpus(root))
    once = len(parsed)
    parsed.clear()
    for s in range(6):
        list(read_documents(root, Manifest(), shard=s, num_shards=6))
    assert len(parsed) == once and len(set(parsed)) == once <= n


def test_line_numbers_of_a_byte_range_are_those_of_the_file(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = [json.dumps({"id": f"d{i}", "text": "x" * (i % 7 + 1)}) for i in range(300)]
    lines[150] = "{broken"
    path.write_text("\n\n".join(lines) + "\n")  # blank lines between: line n is record n // 2
    plan = plan_shards(path, 4)
    assert len(plan[2]) == 1 and plan[2][0].start > 0 and plan[2][0].first > 1
    for s in range(4):
        for item in read_corpus(path, parts=plan[s]):
            line = int(item.location.rsplit(":", 1)[1])
            assert (line - 1) % 2 == 0
            if isinstance(item, Document):
                assert item.id == f"d{(line - 1) // 2}"
            else:
                assert item.reason == "invalid_json" and line == 301


def test_a_gzipped_file_is_one_shards_work_and_the_plan_says_so(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        for i in range(50):
            fh.write(json.dumps({"id": str(i), "text": "t"}) + "\n")
    plan = plan_shards(path, 4)
    assert sum(len(p) for p in plan.parts) == 1
    assert len(plan.notes) == 1 and "cannot be split by byte range" in plan.notes[0]


def test_duplicate_ids_across_shards_are_left_to_the_merge_step(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": "t " * 50}) + "\n"
                            for i in ["a", "b", "c", "d", "a", "e", "e"]))
    shards = [list(read_corpus(path, parts=plan_shards(path, 2)[s])) for s in range(2)]
    ids = [[x.id for x in items] for items in shards]
    assert ids[0] + ids[1] == ["a", "b", "c", "d", "a", "e", "e"]
    assert [getattr(x, "reason", None) for x in shards[1]][-1] == "duplicate_id"  # inside a shard
    assert "a" in ids[0] and isinstance(shards[1][0], Document)  # across: the merge step's job


def test_a_plan_names_shards_that_read_other_parts(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "text": "t " * 20}) + "\n" for i in range(40)))
    plan = plan_shards(path, 3)
    results = {s: {"parts": plan.record(s)} for s in range(3)}
    assert plan.stale(results) == []
    with open(path, "a") as fh:  # the input grows: the split moves
        fh.write("".join(json.dumps({"id": f"x{i}", "text": "t " * 20}) + "\n" for i in range(40)))
    assert plan_shards(path, 3).stale({s: json.loads(json.dumps(r)) for s, r in results.items()})
    assert plan_shards(path, 1).stale({0: {}}) == []  # one shard reads everything either way


def test_input_order_sorts_locations_of_several_files():
    key = input_order(["b/x.jsonl", "a/y.jsonl"])
    locs = ["a/y.jsonl:2", "b/x.jsonl:10", "b/x.jsonl:9", "a/y.jsonl:1"]
    assert sorted(locs, key=key) == ["b/x.jsonl:9", "b/x.jsonl:10", "a/y.jsonl:1", "a/y.jsonl:2"]
