"""``longforge score``: the LDS of every document of a corpus, streaming, sharded, resumable.

Layout of the output folder::

    scores-00000.jsonl ...   one record per input document of that shard (see ``score_document``)
    manifest.json            every input accounted for: scored, too short, or skipped by the reader
    settings.json            what the run was asked for (:mod:`longforge.runs`: a resumed run
                             must ask for the same)
    state/                   shard-<n>.json when a shard is done; shard-<n>.partial.jsonl while
                             it runs (one line per finished document, appended as it finishes,
                             so a killed run resumes without redoing finished documents; the
                             scores file is written from it, streaming, when the shard ends);
                             duplicates.json: documents dropped because an earlier shard has
                             their id

Each shard reads its own part of the input (:func:`longforge.corpus.plan_shards`) and runs on
the executor chosen (local processes or a Ray cluster: docs/scale.md). Short documents are
scored several at a time (``cross_document``): their chunks share the forward passes, up to
``batch_tokens`` tokens, and the groups depend only on the input, never on what a resumed run
had already done, so a resumed or retried shard scores each group as the first run did.

The model is loaded once per process (:func:`loaded`), or passed in by a caller that holds one
(``score_corpus(..., model=lm)``, in-process executors only).
"""
from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from longforge.corpus import (Manifest, ShardWriter, account_duplicates, atomic_write_json,
                              plan_shards, read_documents)
from longforge.executor import check_options, make_executor
from longforge.models import check_spec, device_problem
from longforge.progress import progress, say
from longforge.runs import RunFolder
from longforge.prolong.lds import doc_rng, long_dependency_score, make_chunks, sample_pairs

FORMATS = ("jsonl", "jsonl.gz", "parquet")
SCORE_FIELDS = ("id", "source", "lds", "n_tokens", "n_chunks", "pairs_total", "pairs_scored",
                "pairs_above_threshold", "mean_strength", "mean_distance", "mean_specificity",
                "pairs_nonfinite", "skip")


@dataclass(frozen=True)
class ScoreSettings:
    model: str = "gemma-3-270m"
    chunk_size: int = 128
    max_chunks: int = 256
    pairs: int = 5000
    threshold: float = 0.1
    seed: int = 0
    path: str = "fast"            # "fast" or "reference"
    device: str = "auto"
    dtype: str = "auto"
    batch_tokens: int = 4096      # tokens per forward (fast); pairs per forward = this // chunk
    fmt: str = "jsonl"
    cross_document: bool = True   # short documents share forwards (up to batch_tokens tokens)

    def check(self) -> None:
        if self.chunk_size < 2:
            raise ValueError("--chunk-size must be at least 2 tokens")
        if self.max_chunks < 2:
            raise ValueError("--max-chunks must be at least 2")
        if self.pairs < 1:
            raise ValueError("--pairs must be at least 1")
        if self.path not in ("fast", "reference"):
            raise ValueError(f"--path must be 'fast' or 'reference', not {self.path!r}")
        if self.fmt not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, not {self.fmt!r}")
        problem = device_problem(self.device)
        if problem:
            raise ValueError(problem)
        if self.dtype != "auto":
            import torch

            from longforge.models import resolve_dtype

            resolve_dtype(self.dtype, torch.device("cpu"))  # raises on an unknown name
        if self.batch_tokens < self.chunk_size:
            raise ValueError("--batch-tokens must be at least --chunk-size")


def _schema():
    import pyarrow as pa

    f64, i64 = pa.float64(), pa.int64()
    return pa.schema([("id", pa.string()), ("source", pa.string()), ("lds", f64),
                      ("n_tokens", i64), ("n_chunks", i64), ("pairs_total", i64),
                      ("pairs_scored", i64), ("pairs_above_threshold", i64),
                      ("mean_strength", f64), ("mean_distance", f64),
                      ("mean_specificity", f64), ("pairs_nonfinite", i64),
                      ("skip", pa.string())])


def make_scorer(model, settings: ScoreSettings):
    from longforge.prolong.fast import FastScorer
    from longforge.prolong.reference import ReferenceScorer

    if settings.path == "reference":
        return ReferenceScorer(model, batch_size=max(1, settings.batch_tokens // (8 * settings.chunk_size)))
    return FastScorer(model, batch_tokens=settings.batch_tokens)


def score_document(doc_id: str, token_ids, scorer, s: ScoreSettings, source=None) -> dict:
    """One output record. Documents with fewer than two whole chunks get ``lds = None`` and
    ``skip = "too_short"`` (never a silent zero)."""
    return score_documents([(doc_id, token_ids, source)], scorer, s)[0]


def n_chunks(n_tokens: int, s: ScoreSettings) -> int:
    """Chunks a document of ``n_tokens`` tokens is scored on (0: too short to score)."""
    n = n_tokens // s.chunk_size
    return min(n, s.max_chunks) if n >= 2 else 0


def score_documents(items, scorer, s: ScoreSettings) -> list[dict]:
    """The records of several documents (``(id, token_ids, source)`` each) from one call of the
    scorer: their chunks and pairs are concatenated (pair indices offset to each document's
    chunks), which changes which forward pass a chunk or a pair is in, not what it computes.
    Chunks and pairs are sampled per document, from its own seeded generator, as for one."""
    recs, jobs = [], []
    for doc_id, ids, source in items:
        rec = dict.fromkeys(SCORE_FIELDS)
        rec.update(id=doc_id, source=source, n_tokens=len(ids),
                   n_chunks=min(len(ids) // s.chunk_size, s.max_chunks), pairs_total=0,
                   pairs_scored=0, pairs_above_threshold=0, pairs_nonfinite=0)
        recs.append(rec)
        if not n_chunks(len(ids), s):
            rec["skip"] = "too_short"
            continue
        rng = doc_rng(s.seed, doc_id)
        chunks = make_chunks(ids, s.chunk_size, s.max_chunks, rng)
        jobs.append((rec, chunks, *sample_pairs(len(chunks), s.pairs, rng)))
    if not jobs:
        return recs
    first = np.cumsum([0] + [len(c) for _, c, _, _ in jobs])
    single, pair = scorer.perplexities(np.concatenate([c for _, c, _, _ in jobs]),
                                       np.concatenate([pi + o for (_, _, pi, _), o in zip(jobs, first)]),
                                       np.concatenate([pj + o for (_, _, _, pj), o in zip(jobs, first)]))
    p = 0
    for (rec, chunks, pi, pj), o in zip(jobs, first):
        res = long_dependency_score(single[o:o + len(chunks)], pi, pj, pair[p:p + len(pi)],
                                    max_chunks=s.max_chunks, threshold=s.threshold)
        p += len(pi)
        rec.update(asdict(res), pairs_total=len(chunks) * (len(chunks) - 1) // 2)
    return recs


def document_groups(items, s: ScoreSettings):
    """Consecutive documents (``(doc, token_ids)`` pairs) in groups scored together: with
    ``cross_document``, as many as fit ``batch_tokens // chunk_size`` chunks (a longer document
    alone), else one document each. The groups depend only on the documents, in order."""
    rows = s.batch_tokens // s.chunk_size if s.cross_document else 0
    group, used = [], 0
    for doc, ids in items:
        c = n_chunks(len(ids), s)
        if group and (used + c > rows or not rows):
            yield group
            group, used = [], 0
        group.append((doc, ids))
        used += c
    if group:
        yield group


@functools.lru_cache(maxsize=1)
def loaded(s: ScoreSettings):
    """``(LoadedModel, scorer)`` for ``s``, loaded once per process (shards that run in the same
    process share it)."""
    from longforge.models import load_model

    lm = load_model(s.model, device=None if s.device == "auto" else s.device,
                    dtype=None if s.dtype == "auto" else s.dtype)
    if lm.tokenizer is None:
        raise ValueError(f"model {s.model!r} has no tokenizer")
    return lm, make_scorer(lm.model, s)


def _resume_log(path: Path) -> set[str]:
    """Ids of the documents a killed run finished (one JSON line each in ``path``); the line
    it was writing when killed, if any, is cut off so that new lines follow whole ones."""
    done: set[str] = set()
    if not path.exists():
        return done
    good = 0
    with open(path, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break  # the line a killed run was writing
            try:
                done.add(json.loads(line)["id"])
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                break
            good += len(line)
    with open(path, "r+b") as fh:
        fh.truncate(good)
    return done


def _model_and_scorer(s: ScoreSettings):
    return loaded(s)


@dataclass
class ScoreTask:
    """Score one shard of the corpus (picklable, for the executor)."""

    inputs: list[str]
    output: str
    settings: ScoreSettings
    threads: int = 0
    model: object = None  # a LoadedModel to score with instead of loading settings.model
    plan: object = None   # the ShardPlan of the input (longforge.corpus.shards)

    def _model_and_scorer(self):
        if self.model is None:
            return _model_and_scorer(self.settings)
        if getattr(self, "_scorer", None) is None:
            self._scorer = (self.model, make_scorer(self.model.model, self.settings))
        return self._scorer

    def __call__(self, shard: int, num_shards: int) -> dict:
        if self.threads:
            import torch
            torch.set_num_threads(self.threads)
        s, out = self.settings, Path(self.output)
        log = partial_log(out, shard)
        log.parent.mkdir(parents=True, exist_ok=True)
        done = _resume_log(log)
        manifest, t0 = Manifest(), time.time()
        with open(log, "a", encoding="utf-8") as fh:  # finished documents, in input order
            docs = read_documents(self.inputs, manifest, shard=shard, num_shards=num_shards,
                                  plan=self.plan)
            docs = progress(docs, desc=f"score shard {shard}", unit="doc")
            for group in document_groups(self._tokenized(docs), s):
                if all(doc.id in done for doc, _ in group):
                    continue
                _, scorer = self._model_and_scorer()
                recs = score_documents([(d.id, ids, d.source) for d, ids in group], scorer, s)
                fh.write("".join(json.dumps({**rec, "location": d.location}, sort_keys=True) + "\n"
                                 for (d, _), rec in zip(group, recs) if d.id not in done))
                fh.flush()
        # the scores file, streamed from the log (the log goes once the run's manifest is written)
        tokens = write_scores(out, shard, s, _records(log), manifest)
        return {"manifest": manifest.to_dict(), "seconds": time.time() - t0,
                "scored_tokens": tokens, "resumed_documents": len(done),
                "parts": self.plan.record(shard) if self.plan is not None else None}

    def _tokenized(self, docs):
        for doc in docs:
            lm, _ = self._model_and_scorer()
            ids = lm.tokenizer(doc.text, add_special_tokens=False)["input_ids"]
            vocab = lm.model.config.vocab_size
            if ids and max(ids) >= vocab:
                raise ValueError(f"{doc.location}: the tokenizer of {self.settings.model!r} gives "
                                 f"token id {max(ids)} >= the model's vocabulary {vocab}")
            yield doc, ids


def _records(path: Path):
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


def write_scores(out: Path, shard: int, s: ScoreSettings, records, manifest: Manifest | None = None,
                 exclude: set[str] = frozenset()) -> int:
    """Write ``scores-<shard>`` (atomically) from ``records``, leaving out the ids in
    ``exclude``; count used and dropped documents into ``manifest``; the tokens scored."""
    tokens = 0
    with ShardWriter(out, "scores", shard, s.fmt, schema=_schema()) as w:
        for rec in records:
            if rec["id"] in exclude:
                continue
            w.write({k: rec.get(k) for k in SCORE_FIELDS})
            if rec["skip"]:
                if manifest is not None:
                    manifest.drop(rec["skip"])
            else:
                if manifest is not None:
                    manifest.used += 1
                tokens += rec["n_chunks"] * s.chunk_size
    return tokens


def partial_log(out: Path, shard: int) -> Path:
    return RunFolder(out, "score").state / f"shard-{shard:05d}.partial.jsonl"


def _shard_records(out: Path, shard: int, s: ScoreSettings):
    """A finished shard's records: from its log while it is kept, else from its scores file."""
    log = partial_log(out, shard)
    if log.exists():
        return _records(log)
    return iter(read_scores(out / f"scores-{shard:05d}.{s.fmt}"))


def _cross_shard_duplicates(run: RunFolder, s: ScoreSettings, num_shards: int) -> list[dict]:
    """Documents whose id an earlier shard already has (the first occurrence in input order
    wins, as with one reader): ``{shard, id, location, skip, n_chunks}`` each. Kept in
    ``state/duplicates.json``, so that a rerun accounts them the same way after their records
    were taken out of the scores files. One shard has none: its reader already skipped them."""
    if num_shards == 1:
        return []
    path = run.state / "duplicates.json"
    if path.exists():
        return json.loads(path.read_text())
    seen: set[str] = set()
    dups = []
    for shard in range(num_shards):
        for rec in _shard_records(run.path, shard, s):
            if rec["id"] in seen:
                dups.append({"shard": shard, "id": rec["id"], "location": rec.get("location"),
                             "skip": rec["skip"], "n_chunks": rec["n_chunks"]})
            seen.add(rec["id"])
    atomic_write_json(path, dups)
    return dups


def _drop_duplicates(run: RunFolder, s: ScoreSettings, dups: list[dict], manifest: Manifest,
                     files: list[str]) -> int:
    """Take ``dups`` out of their shards' scores files and account them as one reader would
    (``duplicate_id`` skips, listed with every skip in input order); the tokens they had."""
    tokens = 0
    for shard in sorted({d["shard"] for d in dups}):
        ids = {d["id"] for d in dups if d["shard"] == shard}
        records = list(_shard_records(run.path, shard, s))  # read whole: the file is rewritten
        write_scores(run.path, shard, s, records, exclude=ids)
    account_duplicates(manifest, [(d["location"], d["id"]) for d in dups], files)
    for d in dups:
        if d["skip"]:
            manifest.dropped[d["skip"]] -= 1
        else:
            manifest.used -= 1
            tokens += d["n_chunks"] * s.chunk_size
    manifest.dropped = +manifest.dropped
    return tokens


def check_run(settings: ScoreSettings, num_shards: int = 1, executor: str = "local",
              workers: int | None = None, cpus_per_task: float = 1.0,
              gpus_per_task: float = 0.0) -> None:
    """Every option of a score run, before anything is pinned or read (ValueError)."""
    settings.check()
    if num_shards < 1:
        raise ValueError("--num-shards must be at least 1")
    errors = check_options(executor, workers, cpus_per_task, gpus_per_task)
    if errors:
        raise ValueError("; ".join(errors))


def score_corpus(inputs, output, settings: ScoreSettings = ScoreSettings(), *,
                 num_shards: int = 1, workers: int | None = None, executor: str = "local",
                 model=None, ray_address: str | None = None, cpus_per_task: float = 1.0,
                 gpus_per_task: float = 0.0) -> dict:
    """Score every document; return the manifest (also written to ``output/manifest.json``).

    ``executor``, ``workers``, ``ray_address``, ``cpus_per_task``, ``gpus_per_task``: how the
    shards run (:func:`longforge.executor.make_executor`; docs/scale.md). ``model``: a
    ``LoadedModel`` to score with (it must be ``settings.model``); only with the local executor
    and one worker, which run in this process."""
    check_run(settings, num_shards, executor, workers, cpus_per_task, gpus_per_task)
    if model is not None and (executor != "local" or (workers or 1) != 1):
        raise ValueError("a loaded model can only be used in this process: executor local, "
                         "one worker")
    out = Path(output)
    inputs = [str(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    wanted = {**asdict(settings), "inputs": inputs, "num_shards": num_shards}
    if model is None:
        check_spec(settings.model)  # before settings.json: a typo must not pin a run
    run = RunFolder(out, "score", legacy_state="_state")
    if run.pin(wanted):
        say(f"resuming the run in {out}")
    plan = plan_shards(inputs, num_shards)
    for note in plan.notes:
        say(f"note: {note}")
    ex = make_executor(executor, workers, run.state, desc="score shards", ray_address=ray_address,
                       cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task)
    plan.check_resume(ex.finished(num_shards), out)
    local_workers = workers or 1
    threads = max(1, (os.cpu_count() or 1) // local_workers) if (
        executor == "local" and local_workers > 1) else 0
    task = ScoreTask(inputs, str(out), settings, threads, model, plan)
    results = ex.run(task, num_shards)
    manifest = Manifest()
    for r in results:
        manifest.merge(Manifest.from_dict(r["manifest"]))
    dups = _cross_shard_duplicates(run, settings, num_shards)
    dup_tokens = _drop_duplicates(run, settings, dups, manifest, plan.files)
    manifest.extra = {"settings": wanted, "shards": num_shards,
                      "scored_tokens": sum(r["scored_tokens"] for r in results) - dup_tokens,
                      "outputs": sorted(p.name for p in out.glob(f"scores-*.{settings.fmt}")),
                      "seconds_last_run_per_shard": [round(r["seconds"], 3) for r in results],
                      "executor": ex.describe()}
    run.write_manifest(manifest.to_dict())
    for shard in range(num_shards):  # the manifest is written: the logs have served
        partial_log(out, shard).unlink(missing_ok=True)
    return manifest.to_dict()


def read_scores(path) -> list[dict]:
    """Records from a score output folder (all ``scores-*`` shards) or one score file."""
    p = Path(path)
    files = sorted(f for f in p.glob("scores-*") if not f.name.startswith(".")) if p.is_dir() else [p]
    if not files:
        raise FileNotFoundError(f"{p}: no scores-* files (is this a `longforge score` output?)")
    out: list[dict] = []
    for f in files:
        if f.name.endswith(".parquet"):
            import pyarrow.parquet as pq
            out.extend(pq.read_table(f).to_pylist())
        else:
            from longforge.corpus.readers import open_text
            with open_text(f) as fh:
                out.extend(json.loads(line) for line in fh if line.strip())
    return out
