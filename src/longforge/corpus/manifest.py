"""Book-keeping for a run: every input document is used or skipped with a reason."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from longforge.corpus.document import Skip


@dataclass
class Manifest:
    read: int = 0                               # usable documents read
    used: int = 0                               # documents that made it into the output
    skips: list[Skip] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)  # usable documents left out, by reason
    extra: dict[str, Any] = field(default_factory=dict)

    def skip(self, item: Skip) -> None:
        self.skips.append(item)

    def drop(self, reason: str, n: int = 1) -> None:
        """A usable document that the method left out on purpose (e.g. too short)."""
        self.dropped[reason] += n

    @property
    def total_inputs(self) -> int:
        return self.read + len(self.skips)

    def merge(self, other: "Manifest") -> None:
        self.read += other.read
        self.used += other.used
        self.skips.extend(other.skips)
        self.dropped.update(other.dropped)

    def to_dict(self) -> dict[str, Any]:
        reasons = Counter(s.reason for s in self.skips)
        return {
            "inputs": self.total_inputs,
            "read": self.read,
            "used": self.used,
            "skipped": len(self.skips),
            "skipped_by_reason": dict(sorted(reasons.items())),
            "dropped_by_reason": dict(sorted(self.dropped.items())),
            "skips": [s.to_record() for s in self.skips],
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        m = cls(read=d.get("read", 0), used=d.get("used", 0))
        m.skips = [Skip(**s) for s in d.get("skips", [])]
        m.dropped = Counter(d.get("dropped_by_reason", {}))
        return m
