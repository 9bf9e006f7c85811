"""Read what ``longforge synth`` wrote: sequences, per-document tables, texts, the index."""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


@dataclass
class SynthOutput:
    path: Path
    method: str
    manifest: dict
    sequences: list[dict]          # without their text
    docs: dict[str, dict]          # id -> {source, hash, n_tokens}

    @property
    def label(self) -> str:
        return self.path.name if self.path.name != self.method else self.method


def _iter_sequences(path: Path):
    for f in sorted(path.glob("sequences-*")):
        if f.suffix == ".parquet":
            yield from pq.read_table(f, columns=["n_tokens", "n_pad", "doc_ids", "keyword",
                                                 "sources", "method"]).to_pylist()
            continue
        opener = gzip.open if f.name.endswith(".gz") else open
        with opener(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                rec.pop("text", None)
                yield rec


def load_output(path: str | Path) -> SynthOutput:
    path = Path(path)
    manifest = json.loads((path / "manifest.json").read_text())
    docs = {}
    for f in sorted((path / "work").glob("docs-*.parquet")):
        for r in pq.read_table(f, columns=["id", "source", "hash", "n_tokens"]).to_pylist():
            docs[r["id"]] = r
    return SynthOutput(path, manifest["method"], manifest, list(_iter_sequences(path)), docs)


def texts_of(out: SynthOutput, ids: list[str]) -> list[str]:
    from longforge.synth.prepare import read_texts

    get = read_texts(sorted((out.path / "work").glob("texts-*.sqlite")))
    return [get(d) for d in ids]


def embed_by_hash(outputs: list[SynthOutput], embedder: str) -> dict[str, np.ndarray]:
    """Embeddings of every document of every output, computed once per distinct content."""
    from longforge.progress import progress
    from longforge.synth.embed import embed, load_embedder

    model = load_embedder(embedder)
    vecs: dict[str, np.ndarray] = {}
    for out in outputs:
        todo = sorted({d: r["hash"] for d, r in out.docs.items()
                       if r["hash"] not in vecs}.items())
        for i in progress(range(0, len(todo), 64), desc=f"embed {out.label}", unit="batch"):
            chunk = todo[i:i + 64]
            emb = embed(model, texts_of(out, [d for d, _ in chunk]))
            for (_, h), v in zip(chunk, emb):
                vecs[h] = v
    return vecs
