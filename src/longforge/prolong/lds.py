"""ProLong's Long Dependency Score from perplexities (arXiv 2405.17915; docs/prolong.md), plus the seeded
chunk and pair sampling. Pure numpy: no model in here.

Given chunk perplexities ``single_ppl[i]`` (chunk i alone) and pair perplexities
``pair_ppl[i][j]`` (chunk i after chunk j, j < i):

* delta = single - pair;  strength = delta / single;  distance = clip((i - j) / (N - 1), 0, 1)
  with N the chunk window (``max_chunks``, 256 by default), not the document's chunk count;
* specificity DS_i from the raw deltas of row i over its scored j's: n == 0 -> 0, n == 1 -> 1,
  else clip((log n - H(softmax(row))) / log n, 0, 1);
* LDS = sum over scored pairs with strength > t of (strength + distance) * DS_i (NaN -> 0).

A term that is not finite (a perplexity that overflowed or came out NaN) counts as 0, as in the
authors' code, and is counted in ``pairs_nonfinite`` so that it is never silent; the means are
taken over finite values (None when there are none).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np


def doc_rng(seed: int, doc_id: str) -> np.random.Generator:
    """A generator that depends only on the seed and the document id (not on shard or order)."""
    digest = hashlib.sha256(f"{seed}\0{doc_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def make_chunks(ids, chunk_size: int, max_chunks: int, rng: np.random.Generator) -> np.ndarray:
    """Cut token ids into ``[n, chunk_size]`` chunks, dropping the last partial chunk; keep a
    random ``max_chunks`` of them, in document order, when there are more."""
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids) // chunk_size
    chunks = ids[: n * chunk_size].reshape(n, chunk_size)
    if n > max_chunks:
        keep = np.sort(rng.choice(n, size=max_chunks, replace=False))
        chunks = chunks[keep]
    return chunks


def sample_pairs(n_chunks: int, max_pairs: int, rng: np.random.Generator):
    """``(i, j)`` index arrays of the pairs to score, j < i, sorted by (i, j).

    All pairs when there are at most ``max_pairs`` of them (the authors' code scores none in
    that case: a bug, see docs/prolong.md), else a random sample of ``max_pairs`` without replacement.
    """
    i, j = np.tril_indices(n_chunks, k=-1)  # row-major: sorted by i, then j
    if len(i) > max_pairs:
        keep = np.sort(rng.choice(len(i), size=max_pairs, replace=False))
        i, j = i[keep], j[keep]
    return i.astype(np.int64), j.astype(np.int64)


def specificity(row_deltas) -> float:
    """DS_i from the raw deltas of one chunk over its scored predecessors."""
    row = np.asarray(row_deltas, dtype=np.float64)
    n = len(row)
    if n == 0:
        return 0.0
    if n == 1:
        return 1.0
    z = row - row.max()
    p = np.exp(z) / np.exp(z).sum()
    entropy = -float(np.sum(p * np.log(np.where(p > 0, p, 1.0))))
    return float(np.clip((math.log(n) - entropy) / math.log(n), 0.0, 1.0))


@dataclass
class LDSResult:
    lds: float
    pairs_scored: int
    pairs_above_threshold: int
    mean_strength: float | None     # over scored pairs
    mean_distance: float | None     # over scored pairs
    mean_specificity: float | None  # over chunks i with at least one scored pair
    pairs_nonfinite: int = 0        # scored pairs whose term is NaN or infinite (counted as 0)


def long_dependency_score(single_ppl, pair_i, pair_j, pair_ppl, *, max_chunks: int = 256,
                          threshold: float = 0.1) -> LDSResult:
    """LDS and its parts from per-chunk and per-pair perplexities (arrays of equal length for
    the pairs: pair ``k`` is chunk ``pair_i[k]`` after chunk ``pair_j[k]``)."""
    single = np.asarray(single_ppl, dtype=np.float64)
    pi, pj = np.asarray(pair_i, dtype=np.int64), np.asarray(pair_j, dtype=np.int64)
    pair = np.asarray(pair_ppl, dtype=np.float64)
    if len(pi) == 0:
        return LDSResult(0.0, 0, 0, None, None, None, 0)
    if np.any(pj >= pi):
        raise ValueError("every pair must have j < i")
    distance = np.clip((pi - pj) / max(max_chunks - 1, 1), 0.0, 1.0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # non-finite: counted
        delta = single[pi] - pair
        strength = delta / single[pi]
        ds = {int(i): specificity(delta[pi == i]) for i in np.unique(pi)}
        terms = (strength + distance) * np.array([ds[int(i)] for i in pi])
    finite = np.isfinite(terms)
    above = (strength > threshold) & finite
    lds = float(np.sum(terms, where=above))
    return LDSResult(lds=lds, pairs_scored=len(pi), pairs_above_threshold=int(above.sum()),
                     mean_strength=_finite_mean(strength),
                     mean_distance=float(distance.mean()),
                     mean_specificity=_finite_mean(list(ds.values())),
                     pairs_nonfinite=int((~finite).sum()))


def _finite_mean(values) -> float | None:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else None
