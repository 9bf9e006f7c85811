"""Per-shard preparation: every document of the shard gets its token count (target tokenizer),
its queries and keywords (quest), its embedding (knn, iclm), and its text in a shard-local
SQLite store, so later steps hold ids and counts, never texts.

Runs as an executor task (picklable); a finished shard is not redone on resume, and queries
are cached per document so an interrupted shard does not regenerate them either.
"""
from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from longforge.corpus import Document, Manifest, ShardWriter, read_documents
from longforge.progress import progress
from longforge.synth.config import SynthConfig, cached_tokenizer
from longforge.synth.keywords import KeywordExtractor, representative_keyword
from longforge.synth.queries import FEW_SHOT, content_hash, segment_text

DOC_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("hash", pa.string()),
                        ("n_tokens", pa.int64()), ("keyword", pa.string()),
                        ("keywords", pa.list_(pa.string())), ("queries", pa.list_(pa.string()))])
EXAMPLE_QUESTIONS = {q for _, q in FEW_SHOT}


def work_dir(out: Path) -> Path:
    return Path(out) / "work"


class TextStore:
    """id -> text in SQLite, written to a temporary name and renamed when complete."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp{os.getpid()}")
        self.tmp.unlink(missing_ok=True)
        self.db = sqlite3.connect(self.tmp)
        self.db.execute("CREATE TABLE docs (id TEXT PRIMARY KEY, text TEXT NOT NULL)")

    def add(self, doc_id: str, text: str) -> None:
        self.db.execute("INSERT INTO docs VALUES (?, ?)", (doc_id, text))

    def close(self) -> None:
        self.db.commit()
        self.db.close()
        os.replace(self.tmp, self.path)


def read_texts(paths: list[Path]):
    """A ``get(id) -> text`` over the shard stores."""
    dbs = [sqlite3.connect(f"file:{p}?mode=ro", uri=True) for p in paths]

    def get(doc_id: str) -> str:
        for db in dbs:
            row = db.execute("SELECT text FROM docs WHERE id = ?", (doc_id,)).fetchone()
            if row:
                return row[0]
        raise KeyError(doc_id)
    return get


def _user_queries(doc: Document, field: str) -> list[str] | None:
    q = doc.meta.get(field)
    if isinstance(q, str):
        return [q]
    if isinstance(q, list) and all(isinstance(x, str) for x in q):
        return q
    return None


@dataclass
class PrepareTask:
    cfg: SynthConfig

    def __call__(self, shard: int, num_shards: int) -> dict:
        return _Prepare(self.cfg, shard, num_shards).run()


class _Prepare:
    def __init__(self, cfg: SynthConfig, shard: int, num_shards: int):
        self.cfg, self.shard, self.num_shards = cfg, shard, num_shards
        self.tok = cached_tokenizer(cfg.tokenizer)
        self.manifest = Manifest()
        self.counts: Counter = Counter()
        self.quest = cfg.method == "quest"
        self.predictor = self.cache = None
        self.extractor = KeywordExtractor(cfg.min_score, cfg.min_chars, cfg.stop_keywords)
        if self.quest and cfg.query_source in ("causal", "seq2seq"):
            self.predictor = cfg.make_predictor()
            from longforge.synth.cache import QueryCache

            self.cache = QueryCache(cfg.query_cache_dir(), self.predictor.settings, shard)
        self.embedder = None
        if cfg.method in ("knn", "iclm"):
            from longforge.synth.embed import load_embedder

            self.embedder = load_embedder(cfg.embedder)

    # ------------------------------------------------------------ queries
    def _segments(self, text: str) -> list[str]:
        tok = self.predictor.tokenizer if self.predictor else self.tok
        return segment_text(text, tok, self.cfg.segment_tokens, self.cfg.max_segments)

    def _predict(self, docs: list[Document]) -> dict[str, list[str]]:
        """Queries of each document, from the cache or the predictor (one per segment)."""
        hashes = {d.id: content_hash(d.text) for d in docs}
        todo = [d for d in docs if self.cache.get(hashes[d.id]) is None]
        segs = {d.id: self._segments(d.text) for d in todo}
        flat = [s for d in todo for s in segs[d.id]]
        preds = iter(self.predictor.predict(flat)) if flat else iter(())
        new = {hashes[d.id]: [next(preds) for _ in segs[d.id]] for d in todo}
        if new:
            self.cache.put_many(new)
            self.counts["queries_generated"] += len(flat)
        self.counts["documents_from_query_cache"] += len(docs) - len(todo)
        return {d.id: self.cache.get(hashes[d.id]) for d in docs}

    def _queries(self, docs: list[Document]) -> dict[str, list[str] | None]:
        src = self.cfg.query_source
        if src in ("causal", "seq2seq"):
            return self._predict(docs)
        if src == "user":
            return {d.id: _user_queries(d, self.cfg.query_field) for d in docs}
        return {d.id: self._segments(d.text) for d in docs}  # "document" ablation

    def _keywords(self, queries: list[str]) -> list[str]:
        kept = [q for q in queries if q and q not in EXAMPLE_QUESTIONS]
        self.counts["queries_echoing_prompt_example"] += sum(q in EXAMPLE_QUESTIONS for q in queries)
        self.counts["queries_empty"] += sum(not q for q in queries)
        return self.extractor.document_keywords(kept)

    # ------------------------------------------------------------ per batch
    def _rows(self, docs: list[Document]) -> list[dict]:
        queries = self._queries(docs) if self.quest else {}
        rows = []
        for d in docs:
            qs = queries.get(d.id)
            if self.quest and qs is None:
                self.counts["documents_without_user_queries"] += 1
            kws = self._keywords(qs or []) if self.quest else []
            rows.append({"id": d.id, "source": d.source, "hash": content_hash(d.text),
                         "n_tokens": len(self.tok(d.text, add_special_tokens=False)["input_ids"]),
                         "keyword": representative_keyword(kws, self.cfg.seed, d.id),
                         "keywords": kws, "queries": qs or []})
        return rows

    def _batches(self):
        batch: list[Document] = []
        docs = read_documents(self.cfg.inputs, self.manifest, shard=self.shard,
                              num_shards=self.num_shards, text_field=self.cfg.text_field,
                              id_field=self.cfg.id_field, source_field=self.cfg.source_field)
        for doc in progress(docs, desc=f"prepare shard {self.shard}", unit="doc"):
            batch.append(doc)
            if len(batch) >= self.cfg.doc_batch:
                yield batch
                batch = []
        if batch:
            yield batch

    def run(self) -> dict:
        wd = work_dir(self.cfg.output)
        wd.mkdir(parents=True, exist_ok=True)
        store = TextStore(wd / f"texts-{self.shard:05d}.sqlite")
        vecs = []
        with ShardWriter(wd, "docs", self.shard, "parquet", schema=DOC_SCHEMA) as out:
            for docs in self._batches():
                for row in self._rows(docs):
                    out.write(row)
                for d in docs:
                    store.add(d.id, d.text)
                if self.embedder is not None:
                    from longforge.synth.embed import embed

                    vecs.append(embed(self.embedder, [d.text for d in docs]))
        store.close()
        if self.embedder is not None:
            import numpy as np

            from longforge.synth.embed import save_npy
            save_npy(wd / f"emb-{self.shard:05d}.npy",
                     np.concatenate(vecs) if vecs else np.zeros((0, 384), np.float32))
        if self.cache is not None:
            self.cache.close()
        return {"manifest": json.loads(json.dumps(self.manifest.to_dict())),
                "counts": dict(self.counts)}
