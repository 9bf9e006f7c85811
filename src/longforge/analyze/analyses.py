"""The analyses of the Quest paper, on any set of synth outputs."""
from __future__ import annotations

from collections import Counter

import numpy as np

from longforge.analyze.data import SynthOutput


def mean_pairwise_cosine(vecs: np.ndarray) -> float | None:
    """Mean cosine over distinct pairs of unit vectors (None for fewer than two)."""
    n = len(vecs)
    if n < 2:
        return None
    sim = vecs @ vecs.T
    return float((sim.sum() - np.trace(sim)) / (n * (n - 1)))


def intra_context_similarity(out: SynthOutput, vecs: dict[str, np.ndarray],
                             keep=lambda seq: True) -> dict:
    """Per sequence (those for which ``keep(seq)``), the mean pairwise cosine of its distinct
    documents; then the mean over sequences with at least two documents (single-document
    sequences are counted apart)."""
    per_seq = []
    sequences = [s for s in out.sequences if keep(s)]
    for s in sequences:
        ids = list(dict.fromkeys(s["doc_ids"]))
        v = mean_pairwise_cosine(np.stack([vecs[out.docs[d]["hash"]] for d in ids]))
        if v is not None:
            per_seq.append(v)
    arr = np.array(per_seq)
    return {"sequences": len(sequences), "multi_doc_sequences": len(per_seq),
            "mean": float(arr.mean()) if len(arr) else None,
            "std": float(arr.std()) if len(arr) else None,
            "sem": float(arr.std() / np.sqrt(len(arr))) if len(arr) > 1 else None,
            "docs_per_sequence": float(np.mean([len(set(s["doc_ids"])) for s in sequences]))
            if sequences else None,
            "per_sequence": [round(x, 5) for x in per_seq]}


def keyword_breakdown(out: SynthOutput, vecs: dict[str, np.ndarray]) -> dict | None:
    """For Quest outputs that packed keyword-less documents standard-style (``--no-keyword
    standard``): the similarity of the keyword sequences and of the fallback ones, apart."""
    flags = {s.get("keyword") is None for s in out.sequences}
    if out.method != "quest" or flags != {True, False}:
        return None
    return {"keyword groups": intra_context_similarity(out, vecs, lambda s: s["keyword"] is not None),
            "no-keyword fallback": intra_context_similarity(out, vecs, lambda s: s["keyword"] is None)}


def keyword_group_similarity(out: SynthOutput, vecs: dict[str, np.ndarray]) -> dict | None:
    """How related the documents sharing a keyword are, before any packing: the mean pairwise
    cosine within each keyword of the index that has at least two documents."""
    import pyarrow.parquet as pq

    f = out.path / "index-00000.parquet"
    if not f.exists():
        return None
    groups = pq.read_table(f, columns=["doc_ids"]).column("doc_ids").to_pylist()
    sims = [mean_pairwise_cosine(np.stack([vecs[out.docs[d]["hash"]] for d in ids]))
            for ids in groups if len(ids) >= 2]
    return {"keywords": len(groups), "multi_doc_keywords": len(sims),
            "documents_in_multi_doc_keywords": sum(len(g) for g in groups if len(g) >= 2),
            "mean": float(np.mean(sims)) if sims else None}


def domain_distribution(out: SynthOutput) -> dict:
    """Token share per source domain: of the corpus, of its documents that already fill a
    context ("before": what long-document training sees), and of the packed sequences, by
    piece tokens and by each sequence's majority domain."""
    L = out.manifest["context_length"]
    corpus, long_docs = Counter(), Counter()
    for r in out.docs.values():
        corpus[r["source"]] += r["n_tokens"]
        if r["n_tokens"] + 1 >= L:
            long_docs[r["source"]] += r["n_tokens"]
    majority = Counter()
    for s in out.sequences:
        majority[Counter(s["sources"]).most_common(1)[0][0] if s["sources"] else None] += 1
    norm = lambda c: {k: v / sum(c.values()) for k, v in sorted(c.items(), key=str)} if c else {}
    return {"corpus_tokens": norm(corpus), "long_documents_tokens": norm(long_docs),
            "sequences_by_majority_domain": norm(majority)}


def entropy(dist: dict) -> float:
    p = np.array([v for v in dist.values() if v > 0])
    return float(-(p * np.log2(p)).sum()) if len(p) else 0.0


def keyword_sizes(out: SynthOutput) -> list[int] | None:
    import pyarrow.parquet as pq

    f = out.path / "index-00000.parquet"
    if not f.exists():
        return None
    return pq.read_table(f, columns=["n_docs"]).column("n_docs").to_pylist()


def pick_contexts(out: SynthOutput, n: int, seed: int, min_docs: int = 3) -> list[int]:
    """``n`` sequences with at least ``min_docs`` documents, chosen with the seed."""
    import random

    cands = [i for i, s in enumerate(out.sequences) if len(set(s["doc_ids"])) >= min_docs]
    rng = random.Random(seed)
    return sorted(rng.sample(cands, min(n, len(cands))))


def project_2d(vecs: np.ndarray, seed: int, max_iter: int = 500) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = max(2.0, min(30.0, (len(vecs) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca",
                metric="cosine", max_iter=max_iter).fit_transform(vecs)
