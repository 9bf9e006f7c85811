import pytest

from longforge.synth.baselines import (oversample_repeats, quest_groups, split_index,
                                       standard_groups)
from longforge.synth.pack import Packer


def _lengths(seqs):
    return [s.used + s.n_pad for s in seqs]


def test_carry_continues_a_document_in_the_next_sequence():
    n = {"a": 5, "b": 7, "c": 3}  # with separators: 6, 8, 4 -> 18 tokens
    p = Packer(8, n, "carry")
    seqs = list(p.pack([["a", "b", "c"]]))
    assert _lengths(seqs) == [8, 8]
    assert [(x.doc, x.start, x.end, x.sep) for x in seqs[0].pieces] == [
        ("a", 0, 5, True), ("b", 0, 2, False)]
    assert [(x.doc, x.start, x.end, x.sep) for x in seqs[1].pieces] == [
        ("b", 2, 7, True), ("c", 0, 2, False)]
    assert p.stats.dropped_tail_docs == ["c"]  # c's last token + separator: a partial tail
    assert p.stats.tail_tokens_dropped == 2     # counted: 18 tokens = 2 x 8 written + 2


def test_truncate_discards_the_rest_of_a_document():
    p = Packer(8, {"a": 5, "b": 7, "c": 7}, "truncate")
    seqs = list(p.pack([["a", "b", "c"]]))
    assert [(x.doc, x.start, x.end) for x in seqs[0].pieces] == [("a", 0, 5), ("b", 0, 2)]
    assert [(x.doc, x.start, x.end, x.sep) for x in seqs[1].pieces] == [("c", 0, 7, True)]
    assert p.stats.truncated_tokens == 5
    assert p.stats.tail_tokens_dropped == 0     # c and its separator fill sequence 2 exactly


def test_pad_moves_the_whole_document_and_pads():
    p = Packer(8, {"a": 5, "b": 4, "c": 20}, "pad")
    seqs = list(p.pack([["a", "b", "c"]]))
    assert seqs[0].n_pad == 2 and [x.doc for x in seqs[0].pieces] == ["a"]
    assert [x.doc for x in seqs[1].pieces] == ["b"] and seqs[1].n_pad == 3
    # a document longer than L on its own is cut into L-token pieces, tail padded at the end
    assert [(x.start, x.end) for s in seqs[2:] for x in s.pieces] == [(0, 8), (8, 16), (16, 20)]
    assert all(n == 8 for n in _lengths(seqs))


def test_group_boundary_pad_never_mixes_groups():
    n = {d: 3 for d in "abcdef"}
    seqs = list(Packer(12, n, "carry", "pad").pack([["a", "b"], ["c", "d", "e", "f"]]))
    assert [{x.group for x in s.pieces} for s in seqs] == [{0}, {1}, {1}]


def test_no_document_twice_in_a_sequence():
    n = {"a": 2, "b": 2}
    seqs = list(Packer(20, n, "carry", "mix").pack([["a", "b"], ["a"], ["b", "a"]]))
    for s in seqs:
        docs = [x.doc for x in s.pieces]
        assert len(docs) == len(set(docs))
    assert sum(len(s.pieces) for s in seqs) <= 5


def test_bad_policy_rejected():
    with pytest.raises(ValueError):
        Packer(8, {}, "wrap")


def test_split_index_arithmetic():
    counts = {"k1": 1, "k2": 5, "k3": 2, "k4": 2, "k5": 9, "k6": 1, "k7": 3, "k8": 4,
              "k9": 7, "k10": 6}
    short, long_ = split_index(counts, 0.2)
    assert short == ["k1", "k6"]  # 2 of 10 keywords, fewest documents first, ties by name
    assert len(long_) == 8 and long_[0] == "k3"
    assert split_index(counts, 0.25)[0] == ["k1", "k6", "k3"]  # 2.5 rounds half up to 3
    assert split_index(counts, 0.0)[0] == []


def test_oversample_repeats_arithmetic():
    assert oversample_repeats(100, 1000) == 10
    assert oversample_repeats(300, 1000) == 3      # 3.33 -> 3
    assert oversample_repeats(400, 1000) == 3      # 2.5 -> 3 (half up)
    assert oversample_repeats(1000, 100) == 1      # never below one pass
    assert oversample_repeats(0, 100) == 1
    assert oversample_repeats(100, 1000, max_repeats=4) == 4


def test_quest_groups_oversample_the_short_index():
    index = {"rare": ["r1"], "common": [f"c{i}" for i in range(8)]}
    n = {d: 9 for ids in index.values() for d in ids}  # 10 tokens each with separator
    groups, dropped, info = quest_groups(index, n, 0.5, seed=1, no_keyword=["x"])
    assert info["short_keywords"] == 1 and info["short_repeats"] == 8  # 80 / 10
    assert sum(g == ["r1"] for g in groups) == 8
    assert dropped == {"x": "no_keyword"}
    groups2, dropped2, _ = quest_groups(index, n, 0.5, seed=1, no_keyword=["x"],
                                        no_keyword_policy="standard")
    assert ["x"] in groups2 and dropped2 == {}
    assert quest_groups(index, n, 0.5, seed=2)[0] != groups  # order depends on the seed


def test_standard_is_a_seeded_shuffle():
    ids = [f"d{i}" for i in range(30)]
    assert standard_groups(ids, 0) == standard_groups(list(reversed(ids)), 0)
    assert standard_groups(ids, 0) != standard_groups(ids, 1)


def test_seq_keeps_running_counts_and_adds_in_constant_time():
    import time

    n = {f"d{i}": 1 for i in range(40_000)}  # 2 tokens each with separator: one sequence
    t0 = time.perf_counter()
    seqs = list(Packer(80_000, n, "carry", "mix").pack([list(n)]))
    assert time.perf_counter() - t0 < 10  # walking every piece on each add: ~10^9 steps
    (s,) = seqs
    assert s.used == sum(p.length for p in s.pieces) == 80_000
    assert s.docs == set(n) and s.has("d7") and not s.has("x")
