from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Document:
    """One input document. ``source`` is its domain label (e.g. ``licenses``)."""

    id: str
    text: str
    source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    location: str | None = None  # "file:line" it was read from, for error messages

    def to_record(self) -> dict[str, Any]:
        rec = {"id": self.id, "text": self.text}
        if self.source is not None:
            rec["source"] = self.source
        if self.meta:
            rec["meta"] = self.meta
        return rec


@dataclass
class Skip:
    """An input that was not used, and why. ``reason`` is a short machine-readable code."""

    location: str  # "file:line" (line is 1-based; a row number for Parquet)
    reason: str
    detail: str
    id: str | None = None
    field: str | None = None

    def to_record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def __str__(self) -> str:
        where = f"{self.location}" + (f" field '{self.field}'" if self.field else "")
        return f"{where}: {self.reason}: {self.detail}"
