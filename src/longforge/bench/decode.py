"""``longforge bench decode``: end-to-end decode speed through the model forward, dense vs Quest.

(a) A randomly initialised Llama with TinyLlama-1.1B shapes at long contexts. Its KV cache (a
    ``SparseCache``) is filled in place with synthetic keys and values (``normal_``, then
    ``store.set_length``): prefilling 128K tokens on 2 CPU cores would take hours. Dense and
    Quest decode steps alternate over the same preallocated cache (``cache.policy`` is swapped
    between steps; each step appends one token).
(b) A real model (``--model``, e.g. ``qwen``) after a real dense prefill of a passkey prompt: the
    cache is copied once per policy and each policy greedily decodes its own continuation, steps
    alternating.

Both parts run on the CPU (fp32, the C kernel) or a CUDA GPU (bf16, the Triton kernels), as
``device``, ``dtype`` and ``kernel`` say (``auto`` by default). Both also time the same model
over a one-page cache ("no context": weights, matmuls and framework overhead), so the
attention's share of a step is the difference. Dense decode is the ``Dense`` policy of the same
harness -- the backend's dense step over the preallocated cache (on a CPU the faster dense path
of ``longforge bench attention``) -- not a cache that grows by concatenation.
"""
from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field, replace

import torch

from longforge.bench import common
from longforge.bench.attention import Shape, dense_bytes, quest_bytes
from longforge.models import cache_kw, resolve_dtype
from longforge.progress import progress, say
from longforge.sparse.hf import PagedLayer, SparseCache, sparse_attention
from longforge.sparse.backends import get_backend
from longforge.sparse.policies import Dense, Quest

# The Quest kernels each device runs (the first is ``auto``'s choice). Triton also runs on CPU
# tensors under its interpreter (``TRITON_INTERPRET=1``, slow: for tests).
KERNELS = {"cpu": ("c", "torch"), "cuda": ("triton",)}

FILL_NOTE = ("Part (a): the KV cache is filled in place with synthetic keys and values "
             "(k.normal_(), v.normal_(), then store.set_length(L)) -- no prefill ran (128K "
             "tokens take hours to prefill on a CPU); the model's weights are random.")


@dataclass
class Settings:
    contexts: list[int] = field(default_factory=lambda: [32768, 131072])
    llama: str = "tinyllama"
    model: str = "gemma-3-270m"
    model_contexts: list[int] = field(default_factory=lambda: [8192, 16384])
    steps: int = 24
    warmup: int = 2
    budget: int = 2048
    dense_layers: int | str = "auto"
    page_size: int = 16
    kernel: str = "auto"        # c on a CPU, triton on CUDA (KERNELS)
    stream_mb: int = 512
    seed: int = 0
    device: str = "cpu"
    dtype: str = "auto"         # fp32 on a CPU, bf16 on CUDA (longforge.models.resolve_dtype)
    out: str = ""

    def command(self) -> str:
        return common.command_line("decode", self)

    def policies(self) -> dict:
        """``name: policy`` (with its backend; dense runs the same backend's dense step); with
        the C kernel, Quest on the PyTorch backend is timed too (``quest_torch``)."""
        out = {"dense": Dense(page_size=self.page_size, backend=self.kernel),
               "quest": Quest(self.budget, self.page_size, self.dense_layers, self.kernel)}
        if self.kernel == "c":
            out["quest_torch"] = Quest(self.budget, self.page_size, self.dense_layers, "torch")
        return out


# ------------------------------------------------------------------ models
def llama_config(name: str, max_len: int):
    """TinyLlama-1.1B shapes (random weights), or a tiny Llama for tests."""
    from transformers import LlamaConfig

    from longforge.models import tiny_config

    if name == "tinyllama":
        return LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                           num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                           head_dim=64, max_position_embeddings=max_len, rms_norm_eps=1e-5,
                           tie_word_embeddings=False)
    if name == "tiny":
        return tiny_config("tiny-llama", max_position_embeddings=max_len)
    raise ValueError(f"--llama must be tinyllama or tiny, got {name!r}")


def random_llama(name: str, max_len: int, seed: int, device="cpu", dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = llama_config(name, max_len)
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype).to(device).eval()


def weight_bytes(model) -> int:
    """Bytes of weights one decode step reads: all but the input embedding table (one row of it
    is read), unless that table is also the LM head."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    return total - (0 if emb.data_ptr() == head.data_ptr() else emb.numel() * emb.element_size())


# ------------------------------------------------------------------ caches
def synthetic_cache(model, length: int, extra: int, page_size: int) -> SparseCache:
    """A ``SparseCache`` of ``length`` synthetic tokens per layer (room for ``extra`` more)."""
    cfg = model.config
    cache = SparseCache(model, max_len=length + extra, page_size=page_size)
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w = next(model.parameters())
    empty = torch.empty(1, cfg.num_key_value_heads, 0, hd, device=w.device, dtype=w.dtype)
    for layer in cache.layers:
        if not isinstance(layer, PagedLayer):
            raise ValueError("synthetic caches need full-attention (paged) layers only")
        layer.lazy_initialization(empty, empty)
        layer.store.k[:, :, :length].normal_()
        layer.store.v[:, :, :length].normal_()
        layer.store.set_length(length)
        layer.keys, layer.values = layer.store.keys(), layer.store.values()
    return cache


def kv_bytes(cache: SparseCache, policy, page_size: int) -> int:
    """Bytes of K/V (and page metadata) one decode step reads from ``cache`` under ``policy``."""
    total = 0
    for i, layer in enumerate(cache.layers):
        if isinstance(layer, PagedLayer):
            st = layer.store
            shape, esize = Shape(st.k.shape[1], st.k.shape[1], st.head_dim), st.k.element_size()
            sparse = policy.token_budget is not None and not policy.is_dense_layer(
                i, cache.layer_types)
            total += (quest_bytes(shape, st.length, policy.token_budget, page_size, esize)
                      if sparse else dense_bytes(shape, st.length, esize))
        else:  # sliding window: dense over the window
            k = layer.keys
            total += 2 * k.numel() * k.element_size()
    return total


# ------------------------------------------------------------------ timing
@torch.no_grad()
def step(model, cache, token: torch.Tensor) -> torch.Tensor:
    """One decode step; returns the greedy next token ``[1, 1]``."""
    logits = model(input_ids=token, **cache_kw(model, cache), use_cache=True,
                   logits_to_keep=1).logits
    return logits[:, -1:].argmax(-1)


def time_steps(model, runs: dict, steps: int, warmup: int,
               stream: common.Stream) -> dict[str, list[float]]:
    """``runs[name] = (cache, policy, token)``: one step of each in turn, the order
    rotating every round; ``stream`` (the read bandwidth) is timed in the rotation too."""
    names = [*runs, "stream"]
    toks = {n: runs[n][2] for n in runs}

    def one(n):
        if n == "stream":
            return stream()
        cache, policy, _ = runs[n]
        cache.policy = policy
        toks[n] = step(model, cache, toks[n])

    for _ in range(warmup):
        for n in names:
            one(n)
    times = {n: [] for n in names}
    for r in range(steps):
        for n in common.rotated(names, r):
            times[n].append(common.timed(lambda: one(n), stream.buf.device))
    return times


def summarize(model_name: str, part: str, context: int, times: dict, weights: int,
              kv: dict, stream: common.Stream, extra: dict) -> dict:
    bandwidth = stream.bandwidth(times.pop("stream"))
    ms = {n: common.median_ms(t) for n, t in times.items()}
    lim = {n: 1e3 * (weights + kv[n]) / bandwidth for n in ("dense", "quest")}
    return {
        "model": model_name, "part": part, "context": context, "bandwidth_GBps": bandwidth / 1e9,
        "dense_ms": ms["dense"], "quest_ms": ms["quest"], "no_context_ms": ms["no_context"],
        "dense_tokens_per_s": 1e3 / ms["dense"], "quest_tokens_per_s": 1e3 / ms["quest"],
        "speedup": ms["dense"] / ms["quest"],
        "dense_attention_ms": ms["dense"] - ms["no_context"],
        "quest_attention_ms": ms["quest"] - ms["no_context"],
        "weight_bytes": weights, "dense_kv_bytes": kv["dense"], "quest_kv_bytes": kv["quest"],
        "dense_limit_ms": lim["dense"], "quest_limit_ms": lim["quest"],
        "limit_speedup": lim["dense"] / lim["quest"],
        "dense_fraction_of_limit": lim["dense"] / ms["dense"],
        "quest_fraction_of_limit": lim["quest"] / ms["quest"],
        "quest_torch_ms": ms.get("quest_torch"),
        "speedup_torch": ms["dense"] / ms["quest_torch"] if "quest_torch" in ms else None,
        "steps_ms": {n: [1e3 * x for x in t] for n, t in times.items()}, **extra,
    }


# ------------------------------------------------------------------ the two parts
def llama_part(s: Settings, stream: common.Stream) -> list[dict]:
    extra = 2 * (s.steps + s.warmup) + s.page_size
    model = random_llama(s.llama, max(s.contexts) + extra + 64, s.seed, s.device,
                         resolve_dtype(s.dtype, torch.device(s.device)))
    weights = weight_bytes(model)
    pol = s.policies()
    token = torch.tensor([[1]], device=s.device)
    rows = []
    with sparse_attention(model, Dense()):
        floor = synthetic_cache(model, s.page_size, extra, s.page_size)
        for L in progress(s.contexts, desc=f"decode {s.llama}", unit="context"):
            cache = synthetic_cache(model, L, extra, s.page_size)
            kv = {n: kv_bytes(cache, pol[n], s.page_size) for n in ("dense", "quest")}
            runs = {n: (cache, p, token) for n, p in pol.items()}
            runs["no_context"] = (floor, pol["dense"], token)
            times = time_steps(model, runs, s.steps, s.warmup, stream)
            rows.append(summarize(s.llama, "synthetic cache", L, times, weights, kv, stream,
                                  {"fill": "synthetic"}))
            say(_line(rows[-1]))
            del cache, runs
    return rows


def prompt_ids(tok, length: int, vocab: int, seed: int, device="cpu") -> torch.Tensor:
    """A real passkey prompt of about ``length`` tokens (ids folded into tiny test vocabularies)."""
    from longforge.evals.passkey import build

    ids = torch.tensor([build(tok, length, 0.5, seed)[0]], device=device)
    return ids % vocab if int(ids.max()) >= vocab else ids


@torch.no_grad()
def prefill(model, ids: torch.Tensor, extra: int, page_size: int):
    """Dense prefill into a fresh cache, in chunks (``evals.runner.prefill``: the mask of a 32K
    prompt in one forward would be 32K x 32K per layer); returns ``(cache, the greedy next
    token)``."""
    from longforge.evals.runner import prefill as chunked

    flat = ids[0].tolist()
    cache = chunked(model, flat[:-1], len(flat) + extra, track_scores=False, page_size=page_size)
    return cache, step(model, cache, ids[:, -1:])


def real_model_part(s: Settings, stream: common.Stream) -> list[dict]:
    import time

    from longforge.models import load_model

    lm = load_model(s.model, device=s.device, dtype=s.dtype)
    model, vocab = lm.model, lm.model.config.get_text_config().vocab_size
    weights = weight_bytes(model)
    pol = s.policies()
    extra = s.steps + s.warmup + s.page_size
    rows = []
    with sparse_attention(model, Dense()):
        floor, ftok = prefill(model, prompt_ids(lm.tokenizer, s.page_size, vocab, s.seed,
                                                s.device), extra, s.page_size)
        for L in progress(s.model_contexts, desc=f"decode {s.model}", unit="context"):
            ids = prompt_ids(lm.tokenizer, L, vocab, s.seed, s.device)
            t0 = time.perf_counter()
            base, tok = prefill(model, ids, extra, s.page_size)
            prefill_s = time.perf_counter() - t0
            kv = {n: kv_bytes(base, pol[n], s.page_size) for n in ("dense", "quest")}
            runs = {n: (copy.deepcopy(base), p, tok) for n, p in pol.items()}
            runs["no_context"] = (copy.deepcopy(floor), pol["dense"], ftok)
            times = time_steps(model, runs, s.steps, s.warmup, stream)
            rows.append(summarize(s.model, "real prefill", ids.shape[1], times, weights, kv,
                                  stream, {"fill": "real prefill", "prefill_s": prefill_s}))
            say(_line(rows[-1]))
            del base, runs
    return rows


def _line(r: dict) -> str:
    return (f"{r['model']} {r['context']}: dense {r['dense_ms']:.1f} ms, Quest "
            f"{r['quest_ms']:.1f} ms ({r['speedup']:.2f}x), no context {r['no_context_ms']:.1f} ms")


def checked(s: Settings) -> Settings:
    """``s`` with ``auto`` kernel and dtype resolved for its device; a kernel that does not run
    there is a ``ValueError``, and the C kernel is built now (a clear error if it cannot be)."""
    device = torch.device(s.device)
    kernels = KERNELS[device.type]
    if os.environ.get("TRITON_INTERPRET") == "1" and device.type == "cpu":
        kernels = (*kernels, "triton")
    kernel = kernels[0] if s.kernel == "auto" else s.kernel
    if kernel not in kernels:
        raise ValueError(f"the Quest kernel {kernel!r} does not run on {device.type}; choose "
                         f"one of {('auto', *kernels)}")
    get_backend(kernel, device)
    dtype = str(resolve_dtype(s.dtype, device)).removeprefix("torch.")
    return replace(s, kernel=kernel, dtype={"float32": "fp32", "bfloat16": "bf16",
                                            "float16": "fp16"}.get(dtype, dtype))


def run(s: Settings) -> dict:
    """Both parts; returns ``{"meta": ..., "rows": [...]}`` (nothing written)."""
    s = checked(s)
    torch.manual_seed(s.seed)
    device = torch.device(s.device)
    env = common.environment(device)
    load_start = common.load_average()
    stream = common.Stream(s.stream_mb * 2**20, device)
    rows = llama_part(s, stream) if s.contexts else []
    if s.model != "none" and s.model_contexts:
        rows += real_model_part(s, stream)
    meta = {**env, "command": s.command(), "settings": asdict(s),
            "load_average_start": load_start, "load_average_end": common.load_average(),
            "fill": FILL_NOTE,
            "stream_mb": s.stream_mb, "batch": 1, "dtype": s.dtype,
            "timing": (f"median of {s.steps} decode steps per policy after {s.warmup} warm-up "
                       "steps; policies alternate step by step in a rotating order")}
    return {"meta": meta, "rows": rows}
