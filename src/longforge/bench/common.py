"""What every speed benchmark needs: the machine, a timer, a cache flush, the read bandwidth."""
from __future__ import annotations

import os
import platform
import shlex
import statistics
import time
from dataclasses import dataclass, field, fields

import torch


@dataclass
class KernelTiming:
    """How the kernel benchmarks (``attention``, ``profile``) time: the settings they share."""
    kernels: list[str] = field(default_factory=lambda: ["torch", "c"])
    repeats: int = 40
    warmup: int = 3
    page_size: int = 16
    flush_mb: int = 128
    stream_mb: int = 512
    seed: int = 0
    out: str = ""


def cpu_model() -> str:
    """``model name`` (plus family/model numbers, which name the generation) from /proc/cpuinfo."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                info.setdefault(key.strip(), val.strip())
    except OSError:
        return platform.processor() or platform.machine()
    name = info.get("model name", platform.machine())
    if "cpu family" in info:
        name += f" (family {info['cpu family']}, model {info.get('model', '?')})"
    return name


def environment(device: torch.device) -> dict:
    env = {"device": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu": cpu_model(), "cores": os.cpu_count()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def load_average() -> list[float]:
    """1/5/15-minute load averages (other jobs on the machine show up here)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds one call of ``fn()`` takes (finished work, on the GPU too)."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


class Flusher:
    """Reads a buffer larger than the last-level cache, so each timed call starts cold (as a
    decode step does: the other layers have run in between)."""

    def __init__(self, nbytes: int, device: torch.device):
        self.buf = torch.ones(max(nbytes // 4, 1), device=device) if nbytes > 0 else None

    def __call__(self) -> None:
        if self.buf is not None:
            self.buf.sum()


class Stream:
    """``x.sum()`` over ``nbytes`` of fp32: a streaming read, timed among the methods it bounds
    (interleaved with them, so the bandwidth is measured under the same conditions)."""

    def __init__(self, nbytes: int, device: torch.device):
        self.buf = torch.ones(max(nbytes // 4, 1), device=device)
        self.nbytes = self.buf.numel() * 4

    def __call__(self, *_) -> None:
        self.buf.sum()

    def bandwidth(self, seconds: list[float]) -> float:
        """Bytes/s from the call times (median)."""
        return self.nbytes / statistics.median(seconds)


def rotated(names: list, r: int) -> list:
    """Round ``r``'s order: ``names`` rotated by ``r``, so that no method always runs first
    (or right after the same neighbour) and a noisy moment hits them all alike."""
    k = r % len(names)
    return names[k:] + names[:k]


def median_ms(seconds: list[float]) -> float:
    return 1e3 * statistics.median(seconds)


def command_line(name: str, settings) -> str:
    """The ``longforge bench NAME`` command that reproduces ``settings`` (a dataclass whose
    fields are the command's options, lists comma-joined): the options of its own class first,
    then the inherited ones (those of :class:`KernelTiming`)."""
    parts = [f"longforge bench {name}"]
    own = type(settings).__dict__.get("__annotations__", {})
    for f in sorted(fields(settings), key=lambda f: f.name not in own):
        value = getattr(settings, f.name)
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        option = "--output" if f.name == "out" else f"--{f.name.replace('_', '-')}"
        parts.append(f"{option} {shlex.quote(str(value))}")
    return " ".join(parts)
