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
from longforge.heap import HeapTrimmer
from longforge.progress import progress
from longforge.synth.config import PREDICTED_SOURCES, SynthConfig, cached_tokenizer
from longforge.synth.keywords import KeywordExtractor, PromptEcho, representative_keyword
from longforge.synth.queries import FEW_SHOT, content_hash, parse_queries, segment_text

DOC_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("hash", pa.string()),
                        ("n_tokens", pa.int64()), ("keyword", pa.string()),
                        ("keywords", pa.list_(pa.string())), ("queries", pa.list_(pa.string())),
                        # where the document was read, and what it added to the run's counts (JSON):
                        # the merge step needs both to drop a duplicate of an earlier shard's id
                        ("location", pa.string()), ("counts", pa.string())])
EXAMPLE_QUESTIONS = {q for _, q in FEW_SHOT}


def prompt_echo(cfg: SynthConfig, extractor: KeywordExtractor) -> PromptEcho | None:
    """The few-shot echo filter: causal query prediction only (the other sources have no
    prompt examples to copy)."""
    if cfg.method != "quest" or cfg.query_source != "causal":
        return None
    return PromptEcho(extractor, EXAMPLE_QUESTIONS)


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


def read_texts(paths: list[Path], shard_of=None):
    """A ``get(id) -> text`` over the shard stores: the first store (in shard order) that has
    the id, or with ``shard_of`` (id -> index into ``paths``) that one store only, so that a
    lookup costs one query however many shards there are."""
    dbs = [sqlite3.connect(f"file:{p}?mode=ro", uri=True) for p in paths]

    def get(doc_id: str) -> str:
        for db in ([dbs[shard_of[doc_id]]] if shard_of is not None else dbs):
            row = db.execute("SELECT text FROM docs WHERE id = ?", (doc_id,)).fetchone()
            if row:
                return row[0]
        raise KeyError(doc_id)
    return get


def _user_queries(doc: Document, field: str) -> tuple[list[str] | None, str | None, str | None]:
    """The user queries of ``doc`` (a string or a list of strings in ``field``), or None with
    the reason and a detail: ``None`` (no such field: counted only), ``invalid_user_queries``
    (another type, or a list holding non-strings) or ``empty_user_queries`` (an empty list, or
    only blank strings); the last two are listed in the manifest with the document's location."""
    if field not in doc.meta:
        return None, None, None
    q = doc.meta[field]
    if isinstance(q, str):
        q = [q]
    elif not isinstance(q, list):
        return None, "invalid_user_queries", f"'{field}' is {type(q).__name__}, not a string or a list of strings"
    bad = [(i, type(x).__name__) for i, x in enumerate(q) if not isinstance(x, str)]
    if bad:
        i, kind = bad[0]
        return None, "invalid_user_queries", (f"'{field}' holds {len(bad)} non-string item(s), the "
                                              f"first at position {i} ({kind})")
    if not any(x.strip() for x in q):
        return None, "empty_user_queries", f"'{field}' holds no non-blank query"
    return q, None, None


@dataclass
class PrepareTask:
    cfg: SynthConfig
    model: object = None  # the loaded predictor (LoadedModel), when the caller holds it
    plan: object = None   # the ShardPlan of the input (longforge.corpus.shards)

    def __call__(self, shard: int, num_shards: int) -> dict:
        return _Prepare(self.cfg, shard, num_shards, self.model, self.plan).run()


class _Prepare:
    def __init__(self, cfg: SynthConfig, shard: int, num_shards: int, model=None, plan=None):
        self.cfg, self.shard, self.num_shards, self.plan = cfg, shard, num_shards, plan
        self.tok = cached_tokenizer(cfg.tokenizer)
        self.manifest = Manifest()
        self.counts: Counter = Counter()       # a function of the inputs and settings: manifest
        self.run_counts: Counter = Counter()   # depend on the cache's state: timings.json
        self.query_issues: list[dict] = []
        self._doc_counts: dict[str, Counter] = {}  # each document's share of self.counts
        self.quest = cfg.method == "quest"
        self.predictor = self.cache = None
        self.extractor = KeywordExtractor(cfg.min_score, cfg.min_chars, cfg.extra_stop_keywords())
        self.echo = prompt_echo(cfg, self.extractor)
        if self.quest and cfg.query_source in PREDICTED_SOURCES:
            self.predictor = cfg.make_predictor(model)
            from longforge.synth.cache import QueryCache

            self.cache = QueryCache(cfg.query_cache_dir(), self.predictor.settings, shard)
        self.embedder = None
        if cfg.method in ("knn", "iclm"):
            from longforge.synth.embed import load_embedder

            self.embedder = load_embedder(cfg.embedder, cfg.embed_device, cfg.embed_max_tokens,
                                          cfg.embed_quantize)

    # ------------------------------------------------------------ queries
    def _segments(self, text: str) -> list[str]:
        tok = self.predictor.tokenizer if self.predictor else self.tok
        return segment_text(text, tok, self.cfg.segment_tokens, self.cfg.max_segments)

    def _predict(self, docs: list[Document]) -> dict[str, list[str]]:
        """Queries of each document, one per segment, from the cache or the predictor (only the
        segments the cache lacks are generated)."""
        hashes = {d.id: content_hash(d.text) for d in docs}
        segs = {d.id: self._segments(d.text) for d in docs}
        todo = {(hashes[d.id], i): s for d in docs for i, s in enumerate(segs[d.id])
                if self.cache.get(hashes[d.id], i) is None}
        if todo:
            self.cache.put_many(dict(zip(todo, self.predictor.predict(list(todo.values())))))
        self.run_counts["queries_generated"] += len(todo)
        self.run_counts["queries_from_cache"] += sum(map(len, segs.values())) - len(todo)
        return {d.id: [self.cache.get(hashes[d.id], i) for i in range(len(segs[d.id]))]
                for d in docs}

    def _count(self, doc_id: str, key: str, n: int = 1) -> None:
        self.counts[key] += n
        if n:
            self._doc_counts.setdefault(doc_id, Counter())[key] += n

    def _user(self, doc: Document) -> list[str] | None:
        qs, reason, detail = _user_queries(doc, self.cfg.query_field)
        if qs is None:
            self._count(doc.id, f"documents_with_{reason}" if reason else "documents_without_user_queries")
        if reason:
            self.query_issues.append({"location": doc.location, "id": doc.id,
                                      "field": self.cfg.query_field, "reason": reason,
                                      "detail": detail})
        return qs

    def _parse(self, doc_id: str, answers: list[str]) -> list[str]:
        """The queries of an instruct predictor's answers (one per segment), with the lines
        post-processing dropped counted by reason."""
        out = []
        for a in answers:
            qs, dropped = parse_queries(a, self.cfg.queries_per_segment)
            for why, n in dropped.items():
                self._count(doc_id, f"query_lines_dropped_{why}", n)
            self._count(doc_id, "answers_without_query", int(not qs))
            out += qs
        return out

    def _queries(self, docs: list[Document]) -> dict[str, list[str] | None]:
        src = self.cfg.query_source
        if src in ("causal", "seq2seq"):
            return self._predict(docs)
        if src == "instruct":
            return {d: self._parse(d, a) for d, a in self._predict(docs).items()}
        if src == "user":
            return {d.id: self._user(d) for d in docs}
        return {d.id: self._segments(d.text) for d in docs}  # "document" ablation

    def _keywords(self, doc_id: str, queries: list[str]) -> list[str]:
        kept = [q for q in queries if q and q not in EXAMPLE_QUESTIONS]
        self._count(doc_id, "queries_echoing_prompt_example", sum(q in EXAMPLE_QUESTIONS for q in queries))
        self._count(doc_id, "queries_empty", sum(not q for q in queries))
        kws = self.extractor.document_keywords(kept)
        if self.echo is not None:
            echoes = [k for k in kws if self.echo(k)]
            self._count(doc_id, "keywords_echoing_prompt_example", len(echoes))
            kws = [k for k in kws if k not in echoes]
        return kws

    # ------------------------------------------------------------ per batch
    def _rows(self, docs: list[Document]) -> list[dict]:
        queries = self._queries(docs) if self.quest else {}
        rows = []
        for d in docs:
            qs = queries.get(d.id)
            kws = self._keywords(d.id, qs or []) if self.quest else []
            counts = self._doc_counts.pop(d.id, None)
            rows.append({"id": d.id, "source": d.source, "hash": content_hash(d.text),
                         "n_tokens": len(self.tok(d.text, add_special_tokens=False)["input_ids"]),
                         "keyword": representative_keyword(kws, self.cfg.seed, d.id),
                         "keywords": kws, "queries": qs or [], "location": d.location,
                         "counts": json.dumps(counts, sort_keys=True) if counts else None})
        return rows

    def _batches(self):
        batch: list[Document] = []
        docs = read_documents(self.cfg.inputs, self.manifest, shard=self.shard,
                              num_shards=self.num_shards, plan=self.plan,
                              text_field=self.cfg.text_field,
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
        trimmer = HeapTrimmer()  # a long shard's heap stays flat (longforge.heap)
        with ShardWriter(wd, "docs", self.shard, "parquet", schema=DOC_SCHEMA) as out:
            for docs in self._batches():
                for row in self._rows(docs):
                    out.write(row)
                for d in docs:
                    store.add(d.id, d.text)
                if self.embedder is not None:
                    from longforge.synth.embed import embed

                    vecs.append(embed(self.embedder, [d.text for d in docs]))
                trimmer.tick()
        store.close()
        if self.embedder is not None:
            import numpy as np

            from longforge.synth.embed import save_npy
            save_npy(wd / f"emb-{self.shard:05d}.npy",
                     np.concatenate(vecs) if vecs else np.zeros((0, 384), np.float32))
        if self.cache is not None:
            self.cache.close()
        return {"manifest": json.loads(json.dumps(self.manifest.to_dict())),
                "counts": dict(self.counts), "run_counts": dict(self.run_counts),
                "query_issues": self.query_issues,
                "parts": self.plan.record(self.shard) if self.plan is not None else None}
