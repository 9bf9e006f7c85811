"""The document KV cache: the KV of token prefixes, kept in blocks so that a second question over
the same long document prefills only what follows it.

A prompt is cut into **blocks** of ``block_tokens`` tokens (a whole number of pages). Block ``i``
is keyed by a chained hash: ``key_i = sha256(key_{i-1} || tokens of block i)`` with ``key_-1`` the
digest of the :class:`ModelIdentity` (model spec, a fingerprint of its weights, dtype, page
size, block size, this format's version). A key therefore names one model and one whole token
prefix: two prompts that share their first ``n`` blocks share those ``n`` cache entries, and
nothing is ever reused across models, dtypes, page sizes or block sizes.

A block holds, for every layer, what that layer needs of the block's tokens:

* a full-attention layer (a ``PagedKV`` store): the block's K and V ``[1, H_kv, G, D]`` and its
  pages' key max/min metadata ``[1, H_kv, G / P, 2 D]``;
* a sliding-window layer (Gemma 3's ``DynamicSlidingWindowLayer``): the block's K and V. A
  restored window layer holds the last ``window - 1`` tokens before the prefix end, taken from
  the last blocks, and counts the whole prefix, exactly the state that layer has after a
  prefill of the prefix.

Entries are immutable: restoring copies them into the request's fresh cache (copy on use), so a
policy that changes its cache's state (H2O scores, SnapKV / TOVA kept sets) never touches them.
The cache is an LRU bounded in bytes; a lookup refreshes a prefix's blocks from the last to the
first, so that eviction takes the tails of chains first. With a directory, every block is also
written (in the background, atomically) as one safetensors file, and a block missing from RAM is
read from there; a file made for another identity is ignored.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers.cache_utils import DynamicSlidingWindowLayer

from longforge.sparse.hf import PagedLayer, SparseCache

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelIdentity:
    """Everything a cached KV depends on besides the tokens."""

    spec: str
    weights: str
    dtype: str
    page_size: int
    block_tokens: int
    version: int = FORMAT_VERSION

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


@dataclass
class Block:
    tensors: dict[str, torch.Tensor]   # "<layer>.k", "<layer>.v" (and "<layer>.meta" if paged)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def block_keys(identity: ModelIdentity, ids: list[int]) -> list[str]:
    """The chained key of every complete block of ``ids``."""
    g = identity.block_tokens
    prev, out = identity.digest().encode(), []
    arr = np.asarray(ids, dtype="<i8")
    for s in range(0, len(ids) - g + 1, g):
        prev = hashlib.sha256(prev + arr[s:s + g].tobytes()).hexdigest().encode()
        out.append(prev.decode())
    return out


class DocumentCache:
    """Blocks by key: an LRU in RAM bounded by ``max_bytes``, optionally backed by ``directory``."""

    def __init__(self, identity: ModelIdentity, max_bytes: int, directory: str | Path | None = None):
        self.identity, self.max_bytes = identity, max_bytes
        self.dir = Path(directory) / identity.digest()[:16] if directory else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        self._ram: OrderedDict[str, Block] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="kv-writer") if self.dir else None
        self.counts = {"block_hits": 0, "block_misses": 0, "disk_reads": 0, "disk_writes": 0,
                       "evictions": 0}

    @property
    def keeps(self) -> bool:
        """Whether anything inserted can be kept (RAM or disk)."""
        return self.max_bytes > 0 or self.dir is not None

    # ---------------------------------------------------------------- lookup / insert
    def lookup(self, keys: list[str]) -> list[Block]:
        """The blocks of the longest prefix of ``keys`` that is cached (RAM, then disk)."""
        found = []
        for key in keys:
            block = self._get(key)
            if block is None:
                break
            found.append(block)
        with self._lock:
            self.counts["block_hits"] += len(found)
            self.counts["block_misses"] += int(len(found) < len(keys))
            for key in reversed(keys[: len(found)]):  # the first block ends most recent
                if key in self._ram:
                    self._ram.move_to_end(key)
        return found

    def __contains__(self, key: str) -> bool:
        with self._lock:
            if key in self._ram:
                return True
        return self.dir is not None and self._path(key).exists()

    def insert(self, key: str, block: Block) -> None:
        self._keep(key, block)
        if self._writer is not None and not self._path(key).exists():
            self._writer.submit(self._write, key, block)

    def _get(self, key: str) -> Block | None:
        with self._lock:
            block = self._ram.get(key)
        if block is None and self.dir is not None:
            block = self._read(key)
            if block is not None:
                self._keep(key, block)
        return block

    def _keep(self, key: str, block: Block) -> None:
        n = block.nbytes
        if n > self.max_bytes:
            return
        with self._lock:
            if key in self._ram:
                return
            self._ram[key] = block
            self._bytes += n
            while self._bytes > self.max_bytes:
                _, old = self._ram.popitem(last=False)
                self._bytes -= old.nbytes
                self.counts["evictions"] += 1

    # ---------------------------------------------------------------- disk
    def _path(self, key: str) -> Path:
        return self.dir / f"{key}.safetensors"

    def _metadata(self) -> dict[str, str]:
        return {"longforge_kv_format": str(FORMAT_VERSION),
                "identity": json.dumps(asdict(self.identity), sort_keys=True)}

    def _write(self, key: str, block: Block) -> None:
        from safetensors.torch import save_file

        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            save_file(block.tensors, str(tmp), metadata=self._metadata())
            os.replace(tmp, path)
            with self._lock:
                self.counts["disk_writes"] += 1
        except OSError as exc:
            log.warning("document KV cache: could not write %s: %s", path, exc)
            tmp.unlink(missing_ok=True)

    def _read(self, key: str) -> Block | None:
        from safetensors import safe_open

        path = self._path(key)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                if f.metadata() != self._metadata():
                    log.warning("document KV cache: %s was made for another model identity; "
                                "ignored", path)
                    return None
                block = Block({name: f.get_tensor(name) for name in f.keys()})
        except Exception as exc:  # a truncated or foreign file is a miss, not a failed request
            log.warning("document KV cache: could not read %s: %s", path, exc)
            return None
        with self._lock:
            self.counts["disk_reads"] += 1
        return block

    # ---------------------------------------------------------------- housekeeping
    def flush(self) -> None:
        """Wait for the pending disk writes."""
        if self._writer is not None:
            self._writer.submit(lambda: None).result()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)

    def stats(self) -> dict:
        with self._lock:
            return {"blocks": len(self._ram), "bytes": self._bytes, "max_bytes": self.max_bytes,
                    "block_tokens": self.identity.block_tokens,
                    "directory": str(self.dir) if self.dir else None, **self.counts}


# -------------------------------------------------------------------- a request's SparseCache
class RecordingWindowLayer(DynamicSlidingWindowLayer):
    """A sliding-window layer that also keeps every K/V it is given while ``recorded`` is a list
    (the prefill), so that the blocks can hold them; :func:`stop_recording` ends it."""

    def __init__(self, sliding_window: int, **kwargs):
        super().__init__(sliding_window, **kwargs)
        self.recorded: list[tuple[torch.Tensor, torch.Tensor]] | None = []

    def update(self, key_states, value_states, *args, **kwargs):
        if self.recorded is not None:
            self.recorded.append((key_states, value_states))
        return super().update(key_states, value_states, *args, **kwargs)


def new_cache(model, policy, max_len: int, page_size: int, record: bool = True) -> SparseCache:
    """A :class:`SparseCache` for one request; with ``record``, its window layers record the
    prefill (for :func:`capture`)."""
    cache = SparseCache(model, policy, max_len=max_len, page_size=page_size)
    if record:
        for i, layer in enumerate(cache.layers):
            if isinstance(layer, DynamicSlidingWindowLayer):
                cache.layers[i] = RecordingWindowLayer(layer.sliding_window)
    return cache


def stop_recording(cache: SparseCache) -> None:
    for layer in cache.layers:
        if isinstance(layer, RecordingWindowLayer):
            layer.recorded = None


def restore(cache: SparseCache, blocks: list[Block], device) -> int:
    """Fill a fresh ``cache`` with the prefix the ``blocks`` hold (copies); returns its length."""
    if not blocks:
        return 0
    for i, layer in enumerate(cache.layers):
        k = torch.cat([b.tensors[f"{i}.k"] for b in blocks], dim=2).to(device)
        v = torch.cat([b.tensors[f"{i}.v"] for b in blocks], dim=2).to(device)
        n = k.shape[2]
        if isinstance(layer, PagedLayer):
            if layer.track_scores:
                raise ValueError("a cache that tracks prefill attention scores (H2O) cannot "
                                 "start from cached KV: the scores are not cached")
            layer.lazy_initialization(k, v)
            store = layer.store
            meta = torch.cat([b.tensors[f"{i}.meta"] for b in blocks], dim=2).to(device)
            store.k[:, :, :n], store.v[:, :, :n] = k, v
            store.meta[:, :, : meta.shape[2]] = meta
            store.length = n
            layer.keys, layer.values = store.keys(), store.values()
        elif isinstance(layer, DynamicSlidingWindowLayer):
            layer.lazy_initialization(k, v)
            keep = min(n, layer.sliding_window - 1)
            layer.keys, layer.values = k[:, :, n - keep:].clone(), v[:, :, n - keep:].clone()
            layer.cumulative_length = n
        else:  # pragma: no cover - SparseCache makes only these two kinds
            raise TypeError(f"cannot restore a {type(layer).__name__}")
    return n


def capture(cache: SparseCache, start: int, blocks: list[int], block_tokens: int) -> list[Block]:
    """The prompt's blocks numbered ``blocks`` from ``cache`` (copied to the CPU); the window
    layers' recordings begin at token ``start``."""
    g, out, recorded = block_tokens, [], {}
    if not blocks:
        return out
    for i, layer in enumerate(cache.layers):
        if isinstance(layer, RecordingWindowLayer):
            recorded[i] = (torch.cat([k for k, _ in layer.recorded], dim=2),
                           torch.cat([v for _, v in layer.recorded], dim=2))
    for b in blocks:
        s, e = b * g, (b + 1) * g
        tensors = {}
        for i, layer in enumerate(cache.layers):
            if isinstance(layer, PagedLayer):
                store, p = layer.store, layer.store.page_size
                tensors[f"{i}.k"] = store.k[:, :, s:e]
                tensors[f"{i}.v"] = store.v[:, :, s:e]
                tensors[f"{i}.meta"] = store.meta[:, :, s // p: e // p]
            else:
                k, v = recorded[i]
                tensors[f"{i}.k"], tensors[f"{i}.v"] = k[:, :, s - start:e - start], \
                    v[:, :, s - start:e - start]
        out.append(Block({n: t.detach().to("cpu", copy=True).contiguous()
                          for n, t in tensors.items()}))
    return out
