"""The LDS formulas, chunking and sampling (docs/prolong.md), checked by hand."""
import math

import numpy as np
import pytest

from longforge.prolong.lds import (doc_rng, long_dependency_score, make_chunks, sample_pairs,
                                   specificity)


def test_lds_hand_worked_example():
    # Three chunks, window N = 3 (so distance = (i - j) / 2), threshold t = 0.1.
    # single_ppl = [10, 10, 20]; pairs (i, j) -> pair_ppl:
    #   (1, 0) -> 8 : delta 2, strength 2/10 = 0.2,  distance 1/2 = 0.5
    #   (2, 0) -> 15: delta 5, strength 5/20 = 0.25, distance 2/2 = 1.0
    #   (2, 1) -> 18: delta 2, strength 2/20 = 0.1,  distance 1/2 = 0.5  (0.1 is not > t)
    # DS_1: one scored j -> 1.
    # DS_2: row [5, 2] -> p = softmax = [e^3, 1] / (e^3 + 1) = [0.952574, 0.047426]
    #   H = -(0.952574 ln 0.952574 + 0.047426 ln 0.047426) = 0.046283 + 0.144582 = 0.190865
    #   DS_2 = (ln 2 - H) / ln 2 = (0.693147 - 0.190865) / 0.693147 = 0.724640
    # LDS = (0.2 + 0.5) * 1 + (0.25 + 1.0) * 0.724640 + [skipped: strength 0.1 <= t]
    #     = 0.7 + 0.905800 = 1.605800
    r = long_dependency_score([10, 10, 20], [1, 2, 2], [0, 0, 1], [8, 15, 18], max_chunks=3,
                              threshold=0.1)
    assert r.lds == pytest.approx(1.605800, abs=2e-6)
    assert r.pairs_scored == 3 and r.pairs_above_threshold == 2
    assert r.mean_strength == pytest.approx((0.2 + 0.25 + 0.1) / 3)
    assert r.mean_distance == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert r.mean_specificity == pytest.approx((1 + 0.724640) / 2, abs=1e-6)
    # a higher threshold drops (1, 0) (strength 0.2) and keeps only (2, 0): 1.25 * 0.724640
    r = long_dependency_score([10, 10, 20], [1, 2, 2], [0, 0, 1], [8, 15, 18], max_chunks=3,
                              threshold=0.22)
    assert r.lds == pytest.approx(1.25 * 0.724640, abs=2e-6)


def test_distance_uses_window_not_document_length():
    # Window N = 256: a 1-chunk gap is 1/255, whatever the document's length.
    r = long_dependency_score([10, 10], [1], [0], [5], max_chunks=256, threshold=0.1)
    assert r.mean_distance == pytest.approx(1 / 255)
    assert r.lds == pytest.approx(0.5 + 1 / 255)  # strength 0.5, DS 1


def test_specificity_edge_cases():
    assert specificity([]) == 0.0
    assert specificity([3.7]) == 1.0
    assert specificity([2.0, 2.0, 2.0, 2.0]) == pytest.approx(0.0, abs=1e-12)  # uniform
    assert specificity([100.0, 0.0, 0.0]) == pytest.approx(1.0, abs=1e-12)    # one stands out
    # two deltas [1, 0]: p = [e, 1] / (e + 1) = [0.731059, 0.268941]; H = 0.582203
    assert specificity([1.0, 0.0]) == pytest.approx((math.log(2) - 0.582203) / math.log(2), abs=1e-6)


def test_nan_terms_count_as_zero_and_no_pairs_is_zero():
    # (1, 0): strength 0.5, distance 0.5, DS_1 = 1 -> 1.0. Row 2 holds a NaN perplexity, so its
    # specificity is NaN and both its terms, (2, 0) and the finite-strength (2, 1), count 0;
    # the whole sum does not become NaN (which would zero the document).
    r = long_dependency_score([10, 10, 10], [1, 2, 2], [0, 0, 1], [5, np.nan, 5],
                              max_chunks=3, threshold=0.1)
    assert r.lds == pytest.approx(1.0)
    assert r.pairs_nonfinite == 2 and r.pairs_above_threshold == 1
    assert r.mean_strength == pytest.approx(0.5) and r.mean_specificity == pytest.approx(1.0)
    # an infinite single perplexity: strength inf - inf = NaN, nothing crashes, nothing counts
    r = long_dependency_score([np.inf, np.inf], [1], [0], [np.inf], max_chunks=3)
    assert r.lds == 0.0 and r.pairs_nonfinite == 1 and r.mean_strength is None
    assert long_dependency_score([10], [], [], []).lds == 0.0


def test_chunking_drops_last_partial_chunk():
    chunks = make_chunks(np.arange(25), 10, 256, doc_rng(0, "d"))
    assert chunks.tolist() == [list(range(10)), list(range(10, 20))]
    assert make_chunks(np.arange(9), 10, 256, doc_rng(0, "d")).shape == (0, 10)


def test_chunk_sampling_keeps_order_and_is_seeded():
    chunks = make_chunks(np.arange(1000), 10, 7, doc_rng(0, "d"))
    assert chunks.shape == (7, 10)
    starts = chunks[:, 0]
    assert np.all(np.diff(starts) > 0) and np.all(starts % 10 == 0)
    assert np.all(chunks == starts[:, None] + np.arange(10))  # whole chunks, not shuffled tokens
    again = make_chunks(np.arange(1000), 10, 7, doc_rng(0, "d"))
    other = make_chunks(np.arange(1000), 10, 7, doc_rng(1, "d"))
    assert np.array_equal(chunks, again) and not np.array_equal(chunks, other)


def test_pair_sampling_all_when_fewer_than_budget():
    i, j = sample_pairs(10, 5000, doc_rng(0, "d"))  # 45 pairs < 5000: all of them (authors' bug)
    assert len(i) == 45 and len(set(zip(i, j))) == 45 and np.all(j < i)


def test_pair_sampling_count_and_seed():
    i, j = sample_pairs(30, 100, doc_rng(0, "d"))  # 435 pairs > 100
    assert len(i) == 100 and len(set(zip(i.tolist(), j.tolist()))) == 100 and np.all(j < i)
    i2, j2 = sample_pairs(30, 100, doc_rng(0, "d"))
    i3, _ = sample_pairs(30, 100, doc_rng(0, "e"))
    assert np.array_equal(i, i2) and np.array_equal(j, j2) and not np.array_equal(i, i3)
