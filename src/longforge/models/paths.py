"""Where longforge keeps what it makes once and reuses (dequantized models, built kernels,
query caches)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where longforge keeps its caches (``$LONGFORGE_CACHE`` or ``~/.cache/longforge``)."""
    root = os.environ.get("LONGFORGE_CACHE") or Path.home() / ".cache" / "longforge"
    return Path(root)
