"""Give a long job's free heap memory back to the operating system.

glibc's ``malloc`` serves a request below its mmap threshold from the heap, and raises that
threshold to the size of every mmapped block that is freed (up to 32 MiB). A loop whose tensors
change size from batch to batch, such as an embedder reading documents of varying length, then
leaves free holes in the heap that no later request fits and that stay resident: in a knn synth
run the resident size grew by ~90 KB per document although nothing was kept (2.1 GB at 12,000
documents, 13 GB at 10^5). ``malloc_trim(0)`` hands every free page of the heap back.

Fixing the threshold instead (``MALLOC_MMAP_THRESHOLD_``) keeps the heap flat too, but maps and
faults in every large tensor anew: more than 1.2x slower at 1 MiB and 2.5x at 128 KiB, where
trimming every 64 batches cost nothing measurable (docs/scale.md). Elsewhere than glibc this
is a no-op.
"""
from __future__ import annotations

import ctypes
from functools import cache


@cache
def _malloc_trim():
    # The symbols already loaded into this process (libc's among them): no library search,
    # which on Linux would run ldconfig in a subprocess.
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):  # TypeError: Windows has no handle for the process itself
        return None


def trim_heap() -> bool:
    """Return the heap's free pages to the OS; whether this C library can."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True


class HeapTrimmer:
    """``tick()`` once per batch; every ``every`` ticks it trims the heap."""

    def __init__(self, every: int = 64):
        self.every, self.ticks = max(1, every), 0

    def tick(self) -> None:
        self.ticks += 1
        if self.ticks % self.every == 0:
            trim_heap()
