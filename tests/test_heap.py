import subprocess
import sys
import textwrap

import pytest

from longforge import heap

# In a fresh interpreter, so that the heap's state (glibc's mmap threshold) is known: a freed
# 4 MiB block raises the threshold, so the next 4 MiB blocks come from the heap; 4 KiB objects
# (above pymalloc's 512 bytes, so from malloc too) allocated between them pin the heap's top,
# and freeing the blocks leaves 256 MiB of resident holes that only malloc_trim gives back.
FRAGMENT = textwrap.dedent("""
    import os
    from longforge import heap
    def rss():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    first = bytearray(4 << 20)
    del first
    blocks, pins = [], []
    for _ in range(64):
        blocks.append(bytearray(4 << 20))
        pins.append(bytearray(4096))
    del blocks
    before = rss()
    trimmed = heap.trim_heap()
    print(trimmed, before - rss())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux") or heap._malloc_trim() is None,
                    reason="malloc_trim is glibc's")
def test_trim_returns_free_holes_of_the_heap():
    out = subprocess.run([sys.executable, "-c", FRAGMENT], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "True"
    assert int(out[1]) > 128 << 20  # most of the 256 MiB of holes


def test_trimmer_trims_every_n_ticks(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "trim_heap", lambda: calls.append(1) or True)
    t = heap.HeapTrimmer(every=3)
    for _ in range(7):
        t.tick()
    assert len(calls) == 2
