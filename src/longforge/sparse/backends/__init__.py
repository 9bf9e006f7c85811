"""Decode-step backends: one small interface, four implementations, chosen by name.

A backend runs one decode step of attention for the queries ``q [B, H_q, D]`` over a
:class:`~longforge.sparse.store.PagedKV`: ``dense(...)`` over every cached token, ``quest(...)``
over the pages :mod:`longforge.sparse.selection` picks. :class:`Backend` holds the Quest step
once (dense when the context fits the budget, the selection rule, the short rows of a
left-padded batch attended densely); a backend supplies the scores and the attention:

* ``reference`` (:mod:`.reference`): plain PyTorch, written to be read; every other backend is
  tested against it. Any device.
* ``torch`` (:mod:`.torch_cpu`): the fast PyTorch CPU path (metadata and keys on the left of
  each matmul, one gather of whole pages into reused buffers).
* ``c`` (:mod:`.c_cpu`): a C/OpenMP kernel that reads the metadata and the selected pages in
  place (fp32 CPU; built once with the system C compiler).
* ``triton`` (:mod:`.triton_gpu`): Triton kernels for CUDA GPUs.

``get_backend(name, device)`` with ``name`` None or ``"auto"`` takes the environment variable
``LONGFORGE_SPARSE_BACKEND`` as the default, then chooses by device: CUDA -> ``triton`` (or
``reference``, with a logged warning, if Triton does not import); CPU -> ``c`` (or ``torch``,
with a logged warning that says why, if it cannot be built). Every backend computes the same
method; only the speed differs. ``LONGFORGE_CPU_KERNEL`` (``auto``/``torch``/``c``), the older
name of the CPU setting, is still read.
"""
from __future__ import annotations

import functools
import logging
import os

import torch

from longforge.sparse.backends.base import Backend

log = logging.getLogger(__name__)

__all__ = ["Backend", "get_backend", "resolve", "BACKENDS", "CHOICES"]
BACKENDS = ("reference", "torch", "c", "triton")
CHOICES = ("auto", *BACKENDS)


def default_name() -> str:
    """The backend setting when none is passed: ``$LONGFORGE_SPARSE_BACKEND``, else the older
    ``$LONGFORGE_CPU_KERNEL``, else ``auto``."""
    name = os.environ.get("LONGFORGE_SPARSE_BACKEND") or os.environ.get("LONGFORGE_CPU_KERNEL") \
        or "auto"
    if name not in CHOICES:
        raise ValueError(f"sparse backend {name!r} (from the environment); choose one of "
                         f"{CHOICES}")
    return name


def resolve(name: str | None, device: torch.device | str = "cpu") -> str:
    """The backend name ``name`` stands for on ``device`` (``auto`` resolved)."""
    name = name or default_name()
    if name not in CHOICES:
        raise ValueError(f"unknown sparse backend {name!r}; choose one of {CHOICES}")
    if name != "auto":
        return name
    return _auto(torch.device(device).type)


@functools.lru_cache(maxsize=None)
def _auto(device_type: str) -> str:
    """``auto`` on this device type, decided once per process."""
    if device_type == "cuda":
        try:
            from longforge.sparse.backends import triton_gpu  # noqa: F401
            return "triton"
        except Exception as exc:  # no triton, or no usable GPU toolchain
            log.warning("sparse attention on CUDA: using the reference backend (same method, "
                        "slower) because the Triton kernels do not import: %s", exc)
            return "reference"
    from longforge.sparse.backends import c_cpu

    try:
        c_cpu.library()
        return "c"
    except c_cpu.KernelBuildError as exc:
        log.warning("Quest CPU kernel: using the PyTorch backend (same method, slower) because "
                    "the C kernel cannot be built: %s", exc)
        return "torch"


@functools.lru_cache(maxsize=None)
def _instance(name: str) -> Backend:
    if name == "reference":
        from longforge.sparse.backends.reference import ReferenceBackend as cls
    elif name == "torch":
        from longforge.sparse.backends.torch_cpu import TorchCPUBackend as cls
    elif name == "c":
        from longforge.sparse.backends.c_cpu import CBackend as cls
    else:
        from longforge.sparse.backends.triton_gpu import TritonBackend as cls
    return cls()


def get_backend(name: str | None = None, device: torch.device | str = "cpu") -> Backend:
    """The backend ``name`` (None/``auto``: see the module docstring) for tensors on ``device``;
    ``c`` is built now and raises ``KernelBuildError`` if it cannot be."""
    resolved = resolve(name, device)
    if resolved == "c":
        from longforge.sparse.backends import c_cpu

        c_cpu.library()
    return _instance(resolved)
