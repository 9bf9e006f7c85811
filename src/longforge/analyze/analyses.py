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


def keyword_coverage(out: SynthOutput) -> dict | None:
    """Quest outputs: how many documents got a surviving keyword (their representative one) and
    how many share it with another document, i.e. sit in a keyword holding >= 2 documents (the
    others are grouped with nothing: a keyword group of one)."""
    if out.method != "quest" or not out.docs:
        return None
    sizes = Counter(r["keyword"] for r in out.docs.values() if r["keyword"] is not None)
    n, with_kw = len(out.docs), sum(sizes.values())
    shared = sum(c for c in sizes.values() if c >= 2)
    held = Counter(k for r in out.docs.values() for k in set(r.get("keywords") or ()))
    can_share = sum(any(held[k] >= 2 for k in r.get("keywords") or ()) for r in out.docs.values())
    return {"documents": n, "draw": out.manifest.get("parameters", {}).get("keyword_draw", "any"),
            "with_keyword": with_kw, "with_keyword_share": with_kw / n,
            "in_shared_keywords": shared, "in_shared_keywords_share": shared / n,
            "with_shared_candidate": can_share, "with_shared_candidate_share": can_share / n,
            "keywords": len(sizes), "shared_keywords": sum(c >= 2 for c in sizes.values())}


def frequent_keywords(out: SynthOutput, top: int = 30) -> list[dict] | None:
    """Quest outputs: the ``top`` keywords held by most documents among their candidates (every
    surviving keyword of a document, not only the representative one drawn), with how many
    documents drew each as representative and the sources of its documents. A keyword held by
    documents of many sources names no subject ("latest version", "two types"): a candidate for
    ``--stop-keywords``, the way the Quest paper grew its stop list."""
    if out.method != "quest":
        return None
    holders: dict[str, list[str]] = {}
    for d, r in sorted(out.docs.items()):
        for k in dict.fromkeys(r.get("keywords") or []):
            holders.setdefault(k, []).append(d)
    if not holders:
        return None
    chosen = Counter(r["keyword"] for r in out.docs.values() if r["keyword"] is not None)
    rows = []
    for k, ds in sorted(holders.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:top]:
        src = Counter(out.docs[d]["source"] for d in ds)
        rows.append({"keyword": k, "documents": len(ds), "representative_of": chosen[k],
                     "sources": len(src),
                     "source_shares": {s: c / len(ds) for s, c in src.most_common()}})
    return rows


def piece_tokens(seq: dict) -> Counter:
    """Document tokens of a sequence per document id (from its pieces; separators and padding
    not counted)."""
    c: Counter = Counter()
    for p in seq["pieces"]:
        c[p["doc"]] += p["end"] - p["start"]
    return c


def domain_distribution(out: SynthOutput) -> dict:
    """Token share per source domain: of the corpus, of its documents that already fill a
    context ("before": what long-document training sees), and of the packed sequences by each
    sequence's majority domain ("after": the domain holding most of the sequence's document
    tokens, weighted by those tokens), so that before and after are both token shares."""
    L = out.manifest["context_length"]
    corpus, long_docs = Counter(), Counter()
    for r in out.docs.values():
        corpus[r["source"]] += r["n_tokens"]
        if r["n_tokens"] + 1 >= L:
            long_docs[r["source"]] += r["n_tokens"]
    majority = Counter()
    for s in out.sequences:
        by_domain: Counter = Counter()
        for d, n in piece_tokens(s).items():
            by_domain[out.docs[d]["source"]] += n
        if by_domain:
            top = max(by_domain.items(), key=lambda kv: (kv[1], str(kv[0]) if kv[0] else ""))
            majority[top[0]] += sum(by_domain.values())
    norm = lambda c: {k: v / sum(c.values()) for k, v in sorted(c.items(), key=str)} if c else {}
    return {"corpus_tokens": norm(corpus), "long_documents_tokens": norm(long_docs),
            "sequences_by_majority_domain": norm(majority)}


def keyword_purity(out: SynthOutput) -> dict | None:
    """How much of each sequence its dominant keyword holds: per sequence that holds documents
    with a keyword, the share of its document tokens from documents of the keyword with most
    tokens in it (keyword-less documents count in the total, never as a keyword); the mean over
    those sequences, the fraction that are keyword-pure (share 1.0) and keywords per sequence.
    Sequences of keyword-less documents only (``--no-keyword standard``) are counted apart.
    None for outputs whose documents have no keywords (the baselines)."""
    kw = {d: r.get("keyword") for d, r in out.docs.items()}
    if not any(kw.values()):
        return None
    shares, n_kw, no_keyword = [], [], 0
    for s in out.sequences:
        by_kw: Counter = Counter()
        toks = piece_tokens(s)
        for d, n in toks.items():
            if kw.get(d) is not None:
                by_kw[kw[d]] += n
        if not by_kw:
            no_keyword += 1
            continue
        shares.append(max(by_kw.values()) / sum(toks.values()))
        n_kw.append(len(by_kw))
    arr = np.array(shares)
    return {"sequences": len(shares), "no_keyword_sequences": no_keyword,
            "mean": float(arr.mean()) if len(arr) else None,
            "pure_fraction": float((arr >= 1.0 - 1e-12).mean()) if len(arr) else None,
            "keywords_per_sequence": float(np.mean(n_kw)) if n_kw else None}


def padding_share(out: SynthOutput) -> float | None:
    """Padding tokens over all tokens of the sequences."""
    total = sum(s["n_tokens"] + s["n_pad"] for s in out.sequences)
    return sum(s["n_pad"] for s in out.sequences) / total if total else None


def _rng(seed: int, *labels: str) -> np.random.Generator:
    import zlib

    return np.random.default_rng([seed, *(zlib.crc32(x.encode()) for x in labels)])


def bootstrap_means(values, seed: int, label: str, draws: int = 10_000) -> np.ndarray:
    """Means of ``draws`` resamples (with replacement) of ``values``; the stream depends on the
    seed and the label only, so a method's interval does not change with the other outputs."""
    v = np.asarray(values, dtype=np.float64)
    rng, out = _rng(seed, label), []
    for start in range(0, draws, 1000):  # bounded memory: 1000 x n indices at a time
        idx = rng.integers(0, len(v), size=(min(1000, draws - start), len(v)))
        out.append(v[idx].mean(axis=1))
    return np.concatenate(out)


def compare(sim: dict[str, dict], seed: int, level: float = 0.95, draws: int = 10_000,
            reference: str | None = "standard") -> dict:
    """Bootstrap percentile intervals (``level``) of each output's mean intra-context cosine
    (sequences resampled), and, for each adjacent pair of the ordering by mean and for each
    output against ``reference`` (when present), the interval of the difference of means (the
    two resampled independently): a pair is distinguishable when that interval excludes 0."""
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    boots = {k: bootstrap_means(v["per_sequence"], seed, k, draws)
             for k, v in sim.items() if len(v["per_sequence"]) >= 2}
    ci = {k: [float(np.percentile(b, lo_q)), float(np.percentile(b, hi_q))]
          for k, b in boots.items()}
    ranked = sorted(boots, key=lambda k: sim[k]["mean"])

    def difference(a: str, b: str) -> dict:
        """``b``'s mean minus ``a``'s, with the interval of the resampled differences."""
        d = boots[b] - boots[a]
        lo, hi = float(np.percentile(d, lo_q)), float(np.percentile(d, hi_q))
        return {"difference": sim[b]["mean"] - sim[a]["mean"], "ci": [lo, hi],
                "distinguishable": bool(lo > 0 or hi < 0)}

    pairs = [{"lower": a, "higher": b, **difference(a, b)} for a, b in zip(ranked, ranked[1:])]
    ref = reference if reference in boots else None
    versus = {k: difference(ref, k) for k in boots if ref is not None and k != ref}
    return {"level": level, "draws": draws, "seed": seed, "ci": ci, "ordering": ranked,
            "adjacent_pairs": pairs, "reference": ref, "versus_reference": versus}


def ordering_text(cmp: dict) -> str:
    """``a < b ≈ c``: ``<`` where the bootstrap tells the pair apart, ``≈`` where it does not."""
    if not cmp["ordering"]:
        return ""
    out = [cmp["ordering"][0]]
    for p in cmp["adjacent_pairs"]:
        out += ["<" if p["distinguishable"] else "≈", p["higher"]]
    return " ".join(out)


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
