"""A per-document query cache keyed by content hash and predictor settings.

Layout: ``<root>/<settings_key>/part-<shard>-<pid>.jsonl``; each line ``{"hash", "queries"}`` is
appended and flushed after every batch, so a killed run loses at most the batch in flight and a
re-run (with any shard count) regenerates nothing that was finished. A torn last line is ignored.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from longforge.synth.queries import settings_key


class QueryCache:
    def __init__(self, root: str | Path, settings: dict, shard: int = 0):
        self.dir = Path(root) / settings_key(settings)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"part-{shard:05d}-{os.getpid()}.jsonl"
        settings_file = self.dir / "settings.json"
        if not settings_file.exists():
            settings_file.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        self._mem = self._load()
        self._fh = None

    def _load(self) -> dict[str, list[str]]:
        mem: dict[str, list[str]] = {}
        for part in sorted(self.dir.glob("part-*.jsonl")):
            for line in part.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    mem[rec["hash"]] = rec["queries"]
                except (ValueError, KeyError, TypeError):
                    continue  # torn line of a killed run
        return mem

    def get(self, h: str) -> list[str] | None:
        return self._mem.get(h)

    def put_many(self, items: dict[str, list[str]]) -> None:
        if self._fh is None:
            self._fh = open(self.path, "a", encoding="utf-8")
        for h, qs in items.items():
            self._mem[h] = qs
            self._fh.write(json.dumps({"hash": h, "queries": qs}, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def __len__(self) -> int:
        return len(self._mem)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
