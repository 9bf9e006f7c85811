"""``longforge score``: the LDS of every document of a corpus, streaming, sharded, resumable.

Layout of the output folder::

    scores-00000.jsonl ...   one record per input document of that shard (see ``score_document``)
    manifest.json            every input accounted for: scored, too short, or skipped by the reader
    settings.json            what the run was asked for (:mod:`longforge.runs`: a resumed run
                             must ask for the same)
    state/                   shard-<n>.json when a shard is done; shard-<n>.partial.jsonl while
                             it runs (one line per finished document, appended as it finishes,
                             so a killed run resumes without redoing finished documents; the
                             scores file is written from it, streaming, when the shard ends)

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

from longforge.corpus import Manifest, ShardWriter, read_documents
from longforge.executor import make_executor
from longforge.models import check_spec
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
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, not {self.device!r}")
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
    n_avail = len(token_ids) // s.chunk_size
    rec = dict.fromkeys(SCORE_FIELDS)
    rec.update(id=doc_id, source=source, n_tokens=len(token_ids),
               n_chunks=min(n_avail, s.max_chunks), pairs_total=0, pairs_scored=0,
               pairs_above_threshold=0, pairs_nonfinite=0)
    if n_avail < 2:
        rec["skip"] = "too_short"
        return rec
    rng = doc_rng(s.seed, doc_id)
    chunks = make_chunks(token_ids, s.chunk_size, s.max_chunks, rng)
    pi, pj = sample_pairs(len(chunks), s.pairs, rng)
    single, pair = scorer.perplexities(chunks, pi, pj)
    res = long_dependency_score(single, pi, pj, pair, max_chunks=s.max_chunks,
                                threshold=s.threshold)
    rec.update(asdict(res), pairs_total=len(chunks) * (len(chunks) - 1) // 2)
    return rec


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
        manifest, t0, tokens = Manifest(), time.time(), 0
        with open(log, "a", encoding="utf-8") as fh:  # finished documents, in input order
            docs = read_documents(self.inputs, manifest, shard=shard, num_shards=num_shards)
            for doc in progress(docs, desc=f"score shard {shard}", unit="doc"):
                if doc.id in done:
                    continue
                lm, scorer = self._model_and_scorer()
                ids = lm.tokenizer(doc.text, add_special_tokens=False)["input_ids"]
                vocab = lm.model.config.vocab_size
                if ids and max(ids) >= vocab:
                    raise ValueError(f"{doc.location}: the tokenizer of {s.model!r} gives "
                                     f"token id {max(ids)} >= the model's vocabulary {vocab}")
                rec = score_document(doc.id, ids, scorer, s, source=doc.source)
                fh.write(json.dumps(rec, sort_keys=True) + "\n")
                fh.flush()
        # the scores file, streamed from the log (the log goes once the shard is marked done)
        with ShardWriter(out, "scores", shard, s.fmt, schema=_schema()) as w, \
                open(log, encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                w.write(rec)
                if rec["skip"]:
                    manifest.drop(rec["skip"])
                else:
                    manifest.used += 1
                    tokens += rec["n_chunks"] * s.chunk_size
        return {"manifest": manifest.to_dict(), "seconds": time.time() - t0,
                "scored_tokens": tokens, "resumed_documents": len(done)}


def partial_log(out: Path, shard: int) -> Path:
    return RunFolder(out, "score").state / f"shard-{shard:05d}.partial.jsonl"


def score_corpus(inputs, output, settings: ScoreSettings = ScoreSettings(), *,
                 num_shards: int = 1, workers: int = 1, executor: str = "local",
                 model=None) -> dict:
    """Score every document; return the manifest (also written to ``output/manifest.json``).

    ``model``: a ``LoadedModel`` to score with (it must be ``settings.model``); only with the
    local executor and one worker, which run in this process."""
    settings.check()
    if model is not None and (executor != "local" or workers != 1):
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
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0
    task = ScoreTask(inputs, str(out), settings, threads, model)
    results = make_executor(executor, workers, run.state, desc="score shards").run(task, num_shards)
    for shard in range(num_shards):  # every shard is marked done now: its log has served
        partial_log(out, shard).unlink(missing_ok=True)
    manifest = Manifest()
    for r in results:
        manifest.merge(Manifest.from_dict(r["manifest"]))
    manifest.extra = {"settings": wanted, "shards": num_shards,
                      "scored_tokens": sum(r["scored_tokens"] for r in results),
                      "outputs": sorted(p.name for p in out.glob(f"scores-*.{settings.fmt}")),
                      "seconds_last_run_per_shard": [round(r["seconds"], 3) for r in results]}
    run.write_manifest(manifest.to_dict())
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
