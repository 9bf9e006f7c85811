"""``run(cfg)``: prepare shards (resumable) -> index -> method groups -> pack -> write.

Outputs under ``cfg.output``:

* ``sequences-00000.<fmt>``: one record per sequence (text, n_tokens, n_pad, doc_ids, pieces,
  keyword(s), sources, method); ``tokens-00000.parquet`` with ``input_ids`` when ``tokenized``;
* ``index.parquet`` (quest): keyword, n_docs, n_tokens, split, passes, doc_ids;
* ``manifest.json``: inputs, counts, skips with reasons, every read document used or dropped
  with a reason, parameters, seed, versions; ``timings.json`` (seconds per stage, the executor
  and its resubmissions: kept apart so that the manifest is byte-identical across runs and
  executors);
* ``work/``: per-shard document tables (no texts), text stores and embeddings, reused by
  ``longforge analyze`` and on resume.
"""
from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from longforge.corpus import (Manifest, ShardPlan, ShardWriter, account_duplicates,
                              atomic_write_json, plan_shards)
from longforge.corpus.document import Skip
from longforge.executor import make_executor
from longforge.progress import progress, say
from longforge.runs import RunFolder
from longforge.synth import baselines
from longforge.synth.config import EXECUTION, PREDICTED_SOURCES, SynthConfig, cached_tokenizer
from longforge.synth.engines import pad_id_of
from longforge.synth.pack import Packer, Seq
from longforge.synth.keywords import KeywordExtractor, representative_keyword
from longforge.synth.prepare import PrepareTask, prompt_echo, read_texts, work_dir


SEQ_SCHEMA = pa.schema([
    ("text", pa.string()), ("n_tokens", pa.int64()), ("n_pad", pa.int64()),
    ("doc_ids", pa.list_(pa.string())),
    ("pieces", pa.list_(pa.struct([("doc", pa.string()), ("start", pa.int64()),
                                   ("end", pa.int64())]))),
    ("keyword", pa.string()), ("keywords", pa.list_(pa.string())),
    ("sources", pa.list_(pa.string())), ("method", pa.string())])


def _check_state(cfg: SynthConfig) -> None:
    """Refuse to reuse an output directory made with other settings (any of
    ``cfg.fingerprinted()``: the per-shard work, packing options, output format...), naming
    what differs (:class:`longforge.runs.SettingsMismatch`); a rerun with the same settings
    resumes."""
    RunFolder(cfg.output, "synth", legacy=("state/config.json",)).pin(cfg.fingerprinted())


def _prepare(cfg: SynthConfig, model=None):
    """Run (or resume) the per-shard step on the executor; its results, the input's split
    (:func:`longforge.corpus.plan_shards`: each shard reads its own part of the input) and the
    executor."""
    plan = plan_shards(cfg.inputs, cfg.num_shards)
    for note in plan.notes:
        say(f"note: {note}")
    if (cfg.executor == "ray" and cfg.method == "quest" and cfg.query_source in PREDICTED_SOURCES
            and cfg.query_cache is None):
        say(f"note: the query cache is {cfg.query_cache_dir()} on each node; on a cluster of "
            "several machines give --query-cache a folder on shared storage to share it")
    ex = make_executor(cfg.executor, cfg.workers, cfg.output / "state" / "prepare", desc="prepare",
                       ray_address=cfg.ray_address, cpus_per_task=cfg.cpus_per_task,
                       gpus_per_task=cfg.gpus_per_task)
    plan.check_resume(ex.finished(cfg.num_shards), cfg.output)
    return ex.run(PrepareTask(cfg, model, plan), cfg.num_shards), plan, ex


DOC_COLUMNS = ("id", "source", "n_tokens", "keyword")


def keyword_document_counts(cfg: SynthConfig) -> Counter:
    """How many documents hold each candidate keyword (every surviving keyword of a document,
    not only the one drawn), over the per-shard tables; a repeated id counts once, as in
    :func:`_load_docs`. Two columns are read per shard: memory grows with the keywords and ids,
    not with the texts."""
    seen: set[str] = set()
    held: Counter = Counter()
    for s in range(cfg.num_shards):
        t = pq.read_table(work_dir(cfg.output) / f"docs-{s:05d}.parquet",
                          columns=["id", "keywords"]).to_pydict()
        for doc, kws in zip(t["id"], t["keywords"]):
            if doc not in seen:
                seen.add(doc)
                held.update(set(kws or ()))
    return held


def shared_draw(candidates: list[str], held: Counter, seed: int, doc_id: str) -> str | None:
    """``--keyword-draw shared``: the seeded draw of :func:`representative_keyword` among the
    candidates that another document also holds, or among all of them when none is."""
    return representative_keyword([k for k in candidates if held[k] >= 2] or candidates,
                                  seed, doc_id)


def join_singletons(ids: list[str], drawn: list[str | None],
                    candidates: list[list[str] | None], seed: int) -> list[str | None]:
    """``--keyword-draw join``: after the shared draw, each document (in ``ids`` order, id-sorted
    by the caller) that is alone on its drawn keyword moves to one of its candidates that
    another document drew, if it has any (seeded draw among them, as
    :func:`representative_keyword`). Counts are updated as documents move: the keyword a
    document leaves held only it, and the one it joins then holds two or more, so a move never
    leaves another document alone, and one pass in a fixed order is enough."""
    count = Counter(k for k in drawn if k is not None)
    out = list(drawn)
    for i, (doc, kws) in enumerate(zip(ids, candidates)):
        k = out[i]
        if k is None or count[k] != 1:
            continue
        joinable = [c for c in kws or () if c != k and count[c] >= 1]
        if joinable:
            out[i] = representative_keyword(joinable, seed, doc)
            count[k] -= 1
            count[out[i]] += 1
    return out


def _load_docs(cfg: SynthConfig):
    """Columns of the per-shard document tables (no texts), sorted by id so that the result
    does not depend on the shard count, and without the documents whose id an earlier shard
    already has (the first occurrence in input order wins, as with one reader).

    With ``--keyword-draw shared`` or ``join`` (quest) each document's representative keyword
    is drawn again (:func:`shared_draw`) from the candidate counts of the whole corpus; with
    ``join`` the documents left alone on theirs then join another's (:func:`join_singletons`;
    this keeps every document's candidate list in memory until then).

    Also, for each document in that order, its row in the shard-order concatenation of the
    tables (``rows``, to pick its embedding) and its shard (``docs["shard"]``, to find its
    text); and the duplicates dropped (id, location and what they added to the counts)."""
    wd = work_dir(cfg.output)
    held = keyword_document_counts(cfg) if cfg.keyword_draw in ("shared", "join") else None
    seen: set[str] = set()
    # --keyword-draw join also keeps each document's candidates, sorted with the rest
    kept = list(DOC_COLUMNS) + (["keywords"] if cfg.keyword_draw == "join" else [])
    cols: dict[str, list] = {k: [] for k in kept}
    rows, shards, dups, base = [], [], [], 0
    for s in range(cfg.num_shards):
        path = wd / f"docs-{s:05d}.parquet"
        extra = [c for c in ("location", "counts") if c in pq.read_schema(path).names]
        t = pq.read_table(path, columns=list(DOC_COLUMNS) + extra
                          + (["keywords"] if held is not None else [])).to_pydict()
        if held is not None:
            t["keyword"] = [shared_draw(kws or [], held, cfg.seed, doc)
                            for doc, kws in zip(t["id"], t["keywords"])]
        for i, doc in enumerate(t["id"]):
            if doc in seen:
                dups.append({"id": doc, **{c: t[c][i] for c in extra}})
                continue
            seen.add(doc)
            for k in kept:
                cols[k].append(t[k][i])
            rows.append(base + i)
            shards.append(s)
        base += len(t["id"])
    del seen
    order = sorted(range(len(cols["id"])), key=cols["id"].__getitem__)
    docs = {k: [v[i] for i in order] for k, v in cols.items()}
    if cfg.keyword_draw == "join":
        docs["keyword"] = join_singletons(docs["id"], docs["keyword"], docs.pop("keywords"),
                                          cfg.seed)
    docs["shard"] = [shards[i] for i in order]
    return docs, np.asarray(rows, dtype=np.int64)[order], dups


def _load_emb(cfg: SynthConfig, rows: np.ndarray) -> np.ndarray:
    """The embeddings of ``rows`` (rows of the shard-order concatenation), in that order,
    filled shard by shard (one copy of the matrix in memory, not two)."""
    wd = work_dir(cfg.output)
    out, base = None, 0
    for s in range(cfg.num_shards):
        emb = np.load(wd / f"emb-{s:05d}.npy")
        if out is None:
            out = np.empty((len(rows), emb.shape[1]), dtype=np.float32)
        mine = (rows >= base) & (rows < base + len(emb))
        out[mine] = emb[rows[mine] - base]
        base += len(emb)
    return out


def inverted_index(ids: list[str], keywords: list[str | None]) -> dict[str, list[str]]:
    index: dict[str, list[str]] = defaultdict(list)
    for d, k in zip(ids, keywords):
        if k is not None:
            index[k].append(d)
    return {k: sorted(v) for k, v in sorted(index.items())}


def _groups(cfg: SynthConfig, docs: dict[str, list], rows, n_tokens: dict[str, int]):
    ids, info = docs["id"], {}
    if cfg.method == "standard":
        groups, dropped = baselines.standard_groups(ids, cfg.seed)
    elif cfg.method == "longdoc":
        groups, dropped = baselines.longdoc_groups(ids, n_tokens, cfg.context_length)
    elif cfg.method == "quest":
        index = inverted_index(ids, docs["keyword"])
        no_kw = [d for d, k in zip(ids, docs["keyword"]) if k is None]
        groups, dropped, info = baselines.quest_groups(
            index, n_tokens, cfg.split_ratio, cfg.seed, no_kw, cfg.no_keyword, cfg.max_repeats)
        info["index"] = index
    else:
        from longforge.synth.embed import neighbours

        emb = _load_emb(cfg, rows)
        k = cfg.knn_k if cfg.method == "knn" else cfg.iclm_k
        nb, kind = neighbours(emb, k, cfg.index_kind, cfg.seed)
        info = {"faiss_index": kind, "k": k}
        if cfg.method == "knn":
            groups, dropped = baselines.knn_groups(ids, nb, n_tokens, cfg.context_length, cfg.seed)
        else:
            groups, dropped = baselines.iclm_groups(
                ids, emb, nb, cfg.seed, cfg.iclm_walk_k, cfg.iclm_max_cluster,
                cfg.iclm_min_cluster, cfg.iclm_dup_threshold)
    return groups, dropped, info


class _Tokens:
    """Token ids and character offsets of one document at a time (carry-over reuses the last)."""

    def __init__(self, tok, get_text):
        self.tok, self.get_text, self._last = tok, get_text, (None, None, None)

    def __call__(self, doc: str):
        if self._last[0] != doc:
            text = self.get_text(doc)
            enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
            self._last = (doc, text, enc)
        return self._last[1], self._last[2]


def _piece_text(text: str, offsets, start: int, end: int) -> str:
    if start == 0 and end == len(offsets):
        return text
    if end <= start:
        return ""
    a = 0 if start == 0 else offsets[start][0]
    b = len(text) if end == len(offsets) else offsets[end - 1][1]
    return text[a:b]


def _record(seq: Seq, tokens: _Tokens, eos: str, eos_id: int, pad_id: int, method: str,
            group_kw: list, source: dict[str, str]) -> tuple[dict, list[int]]:
    texts, ids = [], []
    for p in seq.pieces:
        text, enc = tokens(p.doc)
        texts.append(_piece_text(text, enc["offset_mapping"], p.start, p.end) + (eos if p.sep else ""))
        ids.extend(enc["input_ids"][p.start:p.end] + ([eos_id] if p.sep else []))
    ids.extend([pad_id] * seq.n_pad)
    share: Counter = Counter()
    for p in seq.pieces:
        if group_kw[p.group] is not None:
            share[group_kw[p.group]] += p.length
    doc_ids = list(dict.fromkeys(p.doc for p in seq.pieces))
    rec = {"text": "".join(texts), "n_tokens": len(ids) - seq.n_pad, "n_pad": seq.n_pad,
           "doc_ids": doc_ids, "pieces": [{"doc": p.doc, "start": p.start, "end": p.end} for p in seq.pieces],
           "keyword": share.most_common(1)[0][0] if share else None,
           "keywords": sorted(share), "sources": [source[d] for d in doc_ids], "method": method}
    return rec, ids


class _Packed:
    """What the rest of a run needs to know about the packed sequences, gathered while they are
    written (the sequences themselves are not kept): the documents used, the packed tokens per
    Quest keyword, and the number of sequences."""

    def __init__(self):
        self.used: set[str] = set()
        self.usage: Counter = Counter()
        self.sequences = 0

    def add(self, seq: Seq, group_kw: list) -> None:
        self.sequences += 1
        for p in seq.pieces:
            self.used.add(p.doc)
            if group_kw[p.group] is not None:
                self.usage[group_kw[p.group]] += p.length


def document_tokens(tok, output: Path, num_shards: int, shard_of: dict[str, int] | None = None
                    ) -> _Tokens:
    """Token ids and offsets of the run's documents, from its text stores under ``work/``
    (``shard_of``: each id's shard, so that a text is read from its own store only)."""
    wd = work_dir(output)
    return _Tokens(tok, read_texts([wd / f"texts-{s:05d}.sqlite" for s in range(num_shards)],
                                   shard_of))


def _write(cfg: SynthConfig, seqs: Iterable[Seq], group_kw: list, source: dict[str, str],
           shard_of: dict[str, int]) -> _Packed:
    """Write each sequence as the packer yields it (streamed: memory does not grow with the
    number of sequences); each text is read from its shard's store (``shard_of``)."""
    tok = cached_tokenizer(cfg.tokenizer)
    pad_id = pad_id_of(tok)
    tokens = document_tokens(tok, cfg.output, cfg.num_shards, shard_of)
    tok_schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("n_pad", pa.int32())])
    packed = _Packed()
    with ShardWriter(cfg.output, "sequences", 0, cfg.fmt, schema=SEQ_SCHEMA) as out, \
            ShardWriter(cfg.output, "tokens", 0, "parquet", schema=tok_schema) as tout:
        for seq in progress(seqs, desc="pack + write", unit="seq"):
            rec, ids = _record(seq, tokens, tok.eos_token, tok.eos_token_id, pad_id, cfg.method,
                               group_kw, source)
            assert len(ids) == cfg.context_length, (len(ids), cfg.context_length)
            out.write(rec)
            if cfg.tokenized:
                tout.write({"input_ids": ids, "n_pad": seq.n_pad})
            packed.add(seq, group_kw)
    if not cfg.tokenized:
        tout.path.unlink(missing_ok=True)
    return packed


def _write_index(cfg: SynthConfig, info: dict, n_tokens: dict[str, int], usage: Counter) -> None:
    index, passes = info["index"], Counter(info["keyword_of_pass"])
    short_n = info["short_keywords"]
    order = sorted(index, key=lambda k: (len(index[k]), k))
    split = {k: ("short" if i < short_n else "long") for i, k in enumerate(order)}
    rows = [{"keyword": k, "n_docs": len(v), "n_tokens": sum(n_tokens[d] + 1 for d in v),
             "split": split[k], "passes": passes[k], "packed_tokens": usage[k], "doc_ids": v}
            for k, v in index.items()]
    schema = pa.schema([("keyword", pa.string()), ("n_docs", pa.int64()), ("n_tokens", pa.int64()),
                        ("split", pa.string()), ("passes", pa.int64()),
                        ("packed_tokens", pa.int64()), ("doc_ids", pa.list_(pa.string()))])
    with ShardWriter(cfg.output, "index", 0, "parquet", schema=schema) as w:
        for r in rows:
            w.write(r)


def _files(cfg: SynthConfig) -> dict[str, str]:
    """The output files of this run (what ``longforge analyze`` reads; nothing else is)."""
    files = {"sequences": f"sequences-00000.{cfg.fmt}"}
    if cfg.tokenized:
        files["tokens"] = "tokens-00000.parquet"
    if cfg.method == "quest":
        files["index"] = "index-00000.parquet"
    return files


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("longforge", "torch", "transformers", "faiss-cpu", "sentence-transformers",
                "rake-nltk", "pyarrow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _merge(results: list[dict]) -> tuple[Manifest, Counter, Counter, list[dict]]:
    """Shard results -> manifest (read, skips), counts (a function of the inputs and settings),
    run counts (depend on the query cache's state; they go to timings.json, not the manifest)
    and the user-query issues, in shard order."""
    manifest, counts, run_counts, issues = Manifest(), Counter(), Counter(), []
    for r in results:
        m = r["manifest"]
        manifest.read += m["read"]
        manifest.skips.extend(Skip(**s) for s in m["skips"])
        counts.update(r["counts"])
        run_counts.update(r.get("run_counts", {}))
        issues.extend(r.get("query_issues", []))
    return manifest, counts, run_counts, issues


def _drop_duplicates(cfg: SynthConfig, plan: ShardPlan, dups: list[dict], manifest: Manifest,
                     counts: Counter, issues: list[dict]) -> list[dict]:
    """Account the documents dropped because an earlier shard has their id (as one reader
    would have: a ``duplicate_id`` skip at their location, nothing they added to the counts or
    the query issues), and list every skip in input order; the issues left."""
    account_duplicates(manifest, [(d.get("location"), d["id"]) for d in dups], plan.files,
                       cfg.id_field)
    for d in dups:
        counts.subtract(json.loads(d.get("counts") or "{}"))
    gone = {d.get("location") for d in dups}
    return [i for i in issues if i.get("location") not in gone]


class AccountingError(RuntimeError):
    """A document that was read is neither in a sequence nor dropped with a reason: a bug."""


def _account(ids: list[str], used: set[str], dropped: dict[str, str], tail: list[str]) -> None:
    """Give the documents of the last partial sequence their reason; refuse to go on when any
    other document was neither packed nor dropped (that can only be a bug of a method or of the
    packer, never something to report as a count)."""
    for d in tail:
        if d not in used and d not in dropped:
            dropped[d] = "last_partial_sequence"
    lost = [d for d in ids if d not in used and d not in dropped]
    if lost:
        raise AccountingError(f"internal error: {len(lost)} documents were neither packed nor "
                              f"dropped with a reason (first: {lost[:5]}); please report this")


def run(cfg: SynthConfig, model=None) -> dict:
    """Run (or resume) one synth job; return the manifest dict.

    ``model``: the query predictor, already loaded (a ``LoadedModel`` of ``cfg.predictor``), to
    use instead of loading it again; only with one worker (this process)."""
    if model is not None and (cfg.workers != 1 or cfg.executor != "local"):
        raise ValueError("a loaded predictor can only be used in this process: --workers 1, "
                         "--executor local")
    from longforge.models import check_spec

    check_spec(cfg.tokenizer)  # before settings.json: a typo must not pin a run
    if cfg.method == "quest" and cfg.query_source in ("causal", "instruct") and model is None:
        check_spec(cfg.predictor)
    t0 = time.time()
    cfg.output.mkdir(parents=True, exist_ok=True)
    _check_state(cfg)
    results, plan, ex = _prepare(cfg, model)
    manifest, counts, run_counts, issues = _merge(results)
    t_prep = time.time()
    docs, rows, dups = _load_docs(cfg)
    issues = _drop_duplicates(cfg, plan, dups, manifest, counts, issues)
    n_tokens = dict(zip(docs["id"], docs["n_tokens"]))
    source = {d: (s if s is not None else "") for d, s in zip(docs["id"], docs["source"])}
    t_load = time.time()
    groups, dropped, info = _groups(cfg, docs, rows, n_tokens)
    t_groups = time.time()
    packer = Packer(cfg.context_length, n_tokens, cfg.boundary, cfg.effective_group_boundary)
    passes = info.get("keyword_of_pass", [None] * len(groups))
    packed = _write(cfg, packer.pack(groups), passes, source, dict(zip(docs["id"], docs["shard"])))
    t_write = time.time()
    used, usage = packed.used, packed.usage
    say(f"{packed.sequences} sequences of {cfg.context_length} tokens from {len(groups)} groups")
    _account(docs["id"], used, dropped, packer.stats.dropped_tail_docs)
    manifest.used = len(used)
    manifest.dropped = Counter(dropped.values())
    if cfg.method == "quest":
        _write_index(cfg, info, n_tokens, usage)
        no_kw = sum(k is None for k in docs["keyword"])
        echo = prompt_echo(cfg, KeywordExtractor(cfg.min_score, cfg.min_chars,
                                                 cfg.extra_stop_keywords()))
        manifest.extra["quest"] = {
            **{k: v for k, v in info.items() if k not in ("index", "keyword_of_pass")},
            "documents_without_keyword": no_kw, "no_keyword_policy": cfg.no_keyword,
            "keyword_draw": cfg.keyword_draw,
            "prompt_example_keywords": echo.keywords if echo else [],
            "query_issues": issues,
            "top_keywords": [[k, usage[k]] for k, _ in sorted(usage.items(),
                                                               key=lambda kv: (-kv[1], kv[0]))[:20]]}
    elif info:
        manifest.extra[cfg.method] = info
    manifest.extra.update({
        "method": cfg.method, "seed": cfg.seed,
        "parameters": {k: v for k, v in cfg.to_dict().items()
                       if k not in ("output", "query_cache") + EXECUTION},
        "versions": _versions(), "counts": dict(sorted(counts.items())),
        "sequences": packed.sequences, "context_length": cfg.context_length,
        "pad_tokens": packer.stats.pad_tokens, "truncated_tokens": packer.stats.truncated_tokens,
        "tail_tokens_dropped": packer.stats.tail_tokens_dropped,
        "files": _files(cfg),
        "dropped_documents": dict(sorted(dropped.items())),
        "documents_by_source": dict(sorted(Counter(source.values()).items())),
    })
    out = manifest.to_dict()
    RunFolder(cfg.output, "synth").write_manifest(out)
    atomic_write_json(cfg.output / "timings.json",
                      {"prepare_s": round(t_prep - t0, 2), "load_s": round(t_load - t_prep, 2),
                       "groups_s": round(t_groups - t_load, 2),
                       "write_s": round(t_write - t_groups, 2), "total_s": round(time.time() - t0, 2),
                       "documents": manifest.read, "tokens": sum(docs["n_tokens"]),
                       "query_cache": dict(sorted(run_counts.items())), "executor": ex.describe()})
    return out
