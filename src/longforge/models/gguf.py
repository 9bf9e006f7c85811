"""Any GGUF file as a model: checked, dequantized once, cached by the file's content hash.

``dequantized(path)`` returns a folder with an ordinary fp32 safetensors checkpoint and its
tokenizer, made from the GGUF file by the transformers GGUF loader (so every architecture that
loader supports works). The folder is ``cache_dir()/models/gguf-<sha256[:16]>-v1``: the same
file under another name or path reuses it, an edited file gets a new one. It is written under a
temporary name and renamed when complete, under a file lock, so a killed first load leaves
nothing that a later load would take for a finished checkpoint, and parallel first loads wait for
one another instead of dequantizing twice.

A file that is not GGUF, or whose architecture transformers cannot load, is refused at once with
the file's name and what was found (:class:`ModelFileError`), before anything is written.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

from longforge.models.errors import ModelFileError
from longforge.models.paths import cache_dir

MAGIC = b"GGUF"
CACHE_VERSION = "v1"


def is_gguf(path: str | Path) -> bool:
    """``path`` is a file that starts with the GGUF magic bytes."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as fh:
        return fh.read(4) == MAGIC


def _normalized(arch: str) -> str:
    """The architecture name as transformers' GGUF loader spells it after its own renames."""
    renames = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss",
               "minimax-m2": "minimax_m2", "t5encoder": "t5"}
    return renames.get(arch, arch)


def supported_architectures() -> list[str]:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]


def architecture(path: str | Path) -> str:
    """The ``general.architecture`` of a GGUF file, checked against what transformers loads."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such file")
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head != MAGIC:
        raise ModelFileError(f"{p}: not a GGUF file (it starts with {head!r}, a GGUF file with "
                             f"{MAGIC!r})")
    from gguf import GGUFReader

    try:
        field = GGUFReader(p).fields.get("general.architecture")
    except Exception as exc:  # a truncated or corrupt file
        raise ModelFileError(f"{p}: the GGUF header cannot be read ({type(exc).__name__}: "
                             f"{exc})") from exc
    if field is None:
        raise ModelFileError(f"{p}: the GGUF file has no general.architecture field")
    arch = bytes(field.parts[field.data[0]]).decode("utf-8")
    supported = supported_architectures()
    if arch not in supported and _normalized(arch) not in supported:
        raise ModelFileError(f"{p}: architecture {arch!r} is not one that the transformers GGUF "
                             f"loader supports ({', '.join(supported)})")
    return arch


def sha256_file(path: str | Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def content_hash(path: str | Path) -> str:
    """SHA-256 of the file, remembered by (real path, size, mtime) in ``cache_dir()/gguf/
    hashes.json`` so that a later load of the same unchanged file does not read it again."""
    from longforge.corpus.writers import atomic_write_json

    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    memo_path = cache_dir() / "gguf" / "hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key not in memo:
        memo[key] = sha256_file(p)
        atomic_write_json(memo_path, memo)
    return memo[key]


def cache_path(sha: str, name: str = "gguf") -> Path:
    return cache_dir() / "models" / f"{name}-{sha[:16]}-{CACHE_VERSION}"


def dequantized(path: str | Path, sha: str | None = None, name: str = "gguf") -> Path:
    """The cached fp32 checkpoint folder of the GGUF file ``path`` (made on first use)."""
    architecture(path)  # refuse a bad file before anything is written
    sha = sha or content_hash(path)
    out = cache_path(sha, name)
    if (out / "DONE").exists():
        return out
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not (out / "DONE").exists():
            _dequantize(Path(path), out, sha)
    return out


def _dequantize(gguf: Path, out: Path, sha: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s once into %s", gguf.name, out)
    t0 = time.time()
    for old in out.parent.glob(out.name + ".tmp*"):  # leftovers of killed loads (we hold the lock)
        shutil.rmtree(old, ignore_errors=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
        # The GGUF loader marks the model as quantized although its weights are now plain fp32
        # tensors; drop that marker so that it saves and reloads as an ordinary checkpoint.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "DONE").write_text(json.dumps({"source": gguf.name, "sha256": sha,
                                              "seconds": round(time.time() - t0, 1)}) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
