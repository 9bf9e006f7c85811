"""How each method orders documents into groups; :mod:`longforge.synth.pack` then packs them.

Every function returns ``(groups, dropped)``: a list of document-id lists in packing order, and
``{doc_id: reason}`` for documents the method leaves out on purpose.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np


# ------------------------------------------------------------------ standard
def standard_groups(ids: Sequence[str], seed: int):
    """Random shuffle, then concatenate (one group)."""
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    return [order], {}


# ------------------------------------------------------------------ long documents
def longdoc_groups(ids: Sequence[str], n_tokens: dict[str, int], length: int):
    """Only documents that already fill a context (tokens + separator >= L), one per group."""
    keep = [d for d in sorted(ids) if n_tokens[d] + 1 >= length]
    dropped = {d: "shorter_than_context" for d in ids if n_tokens[d] + 1 < length}
    return [[d] for d in keep], dropped


# ------------------------------------------------------------------ quest
def split_index(doc_counts: dict[str, int], split_ratio: float) -> tuple[list[str], list[str]]:
    """Keywords sorted by document count ascending (ties by keyword); the first
    ``round_half_up(split_ratio * K)`` are the short index I_s, the rest I_l."""
    if not 0.0 <= split_ratio <= 1.0:
        raise ValueError("split_ratio must be in [0, 1]")
    order = sorted(doc_counts, key=lambda k: (doc_counts[k], k))
    n_short = math.floor(split_ratio * len(order) + 0.5)
    return order[:n_short], order[n_short:]


def oversample_repeats(short_tokens: int, long_tokens: int, max_repeats: int | None = None) -> int:
    """How many passes over each I_s keyword: the integer nearest to T_l / T_s (at least 1), so
    that I_s and I_l contribute about the same number of tokens; capped by ``max_repeats``."""
    if short_tokens <= 0:
        return 1
    r = max(1, math.floor(long_tokens / short_tokens + 0.5))
    return min(r, max_repeats) if max_repeats else r


def quest_groups(index: dict[str, list[str]], n_tokens: dict[str, int], split_ratio: float,
                 seed: int, no_keyword: Sequence[str] = (), no_keyword_policy: str = "drop",
                 max_repeats: int | None = None):
    """Shuffled keyword passes (I_s keywords ``repeats`` times), documents of each pass shuffled
    (sampling without replacement inside a keyword). Returns groups, dropped, and the split
    book-keeping."""
    counts = {k: len(v) for k, v in index.items()}
    short, long_ = split_index(counts, split_ratio)
    tok = {k: sum(n_tokens[d] + 1 for d in index[k]) for k in index}
    t_s, t_l = sum(tok[k] for k in short), sum(tok[k] for k in long_)
    repeats = oversample_repeats(t_s, t_l, max_repeats)
    passes = list(long_) + [k for k in short for _ in range(repeats)]
    if no_keyword and no_keyword_policy == "standard":
        passes.append(None)
    rng = random.Random(seed)
    rng.shuffle(passes)
    groups = []
    for k in passes:
        docs = sorted(no_keyword) if k is None else sorted(index[k])
        rng.shuffle(docs)
        groups.append(docs)
    dropped = ({d: "no_keyword" for d in no_keyword} if no_keyword_policy == "drop" else {})
    info = {"keywords": len(index), "short_keywords": len(short), "long_keywords": len(long_),
            "short_tokens": t_s, "long_tokens": t_l, "short_repeats": repeats,
            "short_output_tokens": t_s * repeats, "passes": len(passes),
            "keyword_of_pass": passes}
    return groups, dropped, info


# ------------------------------------------------------------------ knn / iclm
def knn_groups(ids: Sequence[str], neighbours: np.ndarray, n_tokens: dict[str, int],
               length: int, seed: int):
    """Each anchor (seeded random order) with its most similar not-yet-used documents, in
    similarity order, until the group fills one context. Every document is used once."""
    pos = list(range(len(ids)))
    random.Random(seed).shuffle(pos)
    used = np.zeros(len(ids), dtype=bool)
    groups = []
    for a in pos:
        if used[a]:
            continue
        used[a] = True
        group, size = [a], n_tokens[ids[a]] + 1
        for nb in neighbours[a]:
            if size >= length:
                break
            if nb >= 0 and not used[nb]:
                used[nb] = True
                group.append(int(nb))
                size += n_tokens[ids[nb]] + 1
        groups.append([ids[i] for i in group])
    return groups, {}


def _iclm_walk(neighbours: np.ndarray, order: list[int], walk_k: int, max_cluster: int):
    visited = np.zeros(len(neighbours), dtype=bool)
    clusters = []
    for start in order:
        if visited[start]:
            continue
        cluster, cur = [start], start
        visited[start] = True
        while len(cluster) < max_cluster:
            nxt = next((int(n) for n in neighbours[cur][:walk_k] if n >= 0 and not visited[n]),
                       None)
            if nxt is None:
                break
            visited[nxt] = True
            cluster.append(nxt)
            cur = nxt
        clusters.append(cluster)
    return clusters


def _iclm_merge_small(clusters: list[list[int]], neighbours: np.ndarray, min_cluster: int):
    owner = {d: c for c, docs in enumerate(clusters) for d in docs}
    for c, docs in enumerate(clusters):
        if not docs or len(docs) >= min_cluster:
            continue
        target = next((owner[int(n)] for n in neighbours[docs[0]]
                       if n >= 0 and owner[int(n)] != c and clusters[owner[int(n)]]), None)
        if target is None:
            continue
        clusters[target].extend(docs)
        for d in docs:
            owner[d] = target
        clusters[c] = []
    return [c for c in clusters if c]


def iclm_groups(ids: Sequence[str], emb: np.ndarray, neighbours: np.ndarray, seed: int,
                walk_k: int = 10, max_cluster: int = 21, min_cluster: int = 3,
                dup_threshold: float = 0.95):
    """In-context pretraining ordering (Shi et al. 2023), as docs/synth.md describes it."""
    order = list(range(len(ids)))
    random.Random(seed).shuffle(order)
    clusters = _iclm_merge_small(_iclm_walk(neighbours, order, walk_k, max_cluster),
                                 neighbours, min_cluster)
    groups, dropped = [], {}
    for cluster in clusters:
        kept = [cluster[0]]
        for d in cluster[1:]:
            if float(emb[d] @ emb[kept[-1]]) >= dup_threshold:
                dropped[ids[d]] = "near_duplicate"
            else:
                kept.append(d)
        groups.append([ids[i] for i in kept])
    return groups, dropped
