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
    docs: dict[str, dict]          # id -> {source, hash, n_tokens, keyword, keywords}
    label: str = ""                # unique among the outputs of one report (see unique_labels)

    def __post_init__(self):
        self.label = self.label or self.path.name


def sequence_files(path: Path, manifest: dict) -> list[Path]:
    """The sequence files the manifest names (never a glob: a directory may hold files of
    another run). Manifests written before ``files`` was recorded name the format only."""
    names = manifest.get("files", {}).get("sequences")
    if names is None:
        names = f"sequences-00000.{manifest.get('parameters', {}).get('fmt', 'jsonl.gz')}"
    files = [path / n for n in ([names] if isinstance(names, str) else names)]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"{path}: the manifest names {missing}, which do not exist")
    return files


def _iter_sequences(files: list[Path]):
    for f in files:
        if f.suffix == ".parquet":
            yield from pq.read_table(f, columns=["n_tokens", "n_pad", "doc_ids", "pieces",
                                                 "keyword", "sources", "method"]).to_pylist()
            continue
        opener = gzip.open if f.name.endswith(".gz") else open
        with opener(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                rec.pop("text", None)
                yield rec


def load_output(path: str | Path, label: str = "") -> SynthOutput:
    path = Path(path)
    manifest = json.loads((path / "manifest.json").read_text())
    docs = {}
    for f in sorted((path / "work").glob("docs-*.parquet")):
        for r in pq.read_table(f, columns=["id", "source", "hash", "n_tokens", "keyword",
                                           "keywords"]).to_pylist():
            docs.setdefault(r["id"], r)  # an id repeated by a later shard: the first one counts
    index = manifest.get("files", {}).get("index")
    if index and docs:
        # the keyword each document was grouped by: the index's, which is the per-shard draw
        # unless --keyword-draw shared / join drew again over the whole corpus
        for r in docs.values():
            r["keyword"] = None
        t = pq.read_table(path / index, columns=["keyword", "doc_ids"]).to_pydict()
        for k, ids in zip(t["keyword"], t["doc_ids"]):
            for d in ids:
                docs[d]["keyword"] = k
    return SynthOutput(path, manifest["method"], manifest,
                       list(_iter_sequences(sequence_files(path, manifest))), docs, label)


def unique_labels(paths: list[str | Path]) -> list[str]:
    """Short, distinct labels: each directory's name, with as many parent folders as it takes
    to tell apart outputs that share a name (``a/quest``, ``b/quest``)."""
    parts = [Path(p).resolve().parts[1:] for p in paths]
    labels = []
    for i, pt in enumerate(parts):
        others = [o for j, o in enumerate(parts) if j != i and o != pt]
        n = next((n for n in range(1, len(pt) + 1)
                  if all(o[-n:] != pt[-n:] for o in others)), len(pt))
        label = "/".join(pt[-n:])
        labels.append(f"{label}#{i + 1}" if pt in parts[:i] else label)
    return labels


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
