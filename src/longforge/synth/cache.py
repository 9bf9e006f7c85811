"""A per-segment query cache keyed by document content hash, segment index and predictor settings.

Layout: ``<root>/<settings_key>/segments-<shard>-<pid>.jsonl``; each line
``{"hash", "seg", "query"}`` is the query of segment ``seg`` of the document whose text has
SHA-256 ``hash``. The settings key covers everything that makes a segment and its query (model,
prompt, ``segment_tokens``, decoding...), so segment ``i`` of a document is the same text whatever
``--max-segments`` asks for: a run with ``--max-segments 1`` caches segment 0 only, and a later
run asking for 4 (or all) reuses it and generates the missing segments.

Lines are appended, flushed and fsynced after every batch, so a killed run loses at most the
batch in flight and a re-run (with any shard count) regenerates nothing that was finished. A torn
last line is ignored. ``part-*.jsonl`` files of the older per-document layout (which did not say
how many segments a list covered) are not read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from longforge.corpus import atomic_write_json
from longforge.synth.queries import settings_key


class QueryCache:
    def __init__(self, root: str | Path, settings: dict, shard: int = 0):
        self.dir = Path(root) / settings_key(settings)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"segments-{shard:05d}-{os.getpid()}.jsonl"
        if not (self.dir / "settings.json").exists():
            atomic_write_json(self.dir / "settings.json", settings)
        self._mem = self._load()
        self._fh = None

    def _load(self) -> dict[tuple[str, int], str]:
        mem: dict[tuple[str, int], str] = {}
        for part in sorted(self.dir.glob("segments-*.jsonl")):
            for line in part.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    key, query = (str(rec["hash"]), int(rec["seg"])), rec["query"]
                except (ValueError, KeyError, TypeError):
                    continue  # torn line of a killed run
                if isinstance(query, str):
                    mem[key] = query
        return mem

    def get(self, h: str, seg: int) -> str | None:
        return self._mem.get((h, seg))

    def put_many(self, items: dict[tuple[str, int], str]) -> None:
        """Append ``{(hash, segment index): query}`` and make it durable (flush + fsync)."""
        if not items:
            return
        if self._fh is None:
            self._fh = open(self.path, "a", encoding="utf-8")
        for (h, seg), q in items.items():
            self._mem[(h, seg)] = q
            self._fh.write(json.dumps({"hash": h, "seg": seg, "query": q}, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def __len__(self) -> int:
        return len(self._mem)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
