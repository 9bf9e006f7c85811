"""The run folder: one contract for every long job (``synth``, ``score``, ``eval``, ``bench``,
``export``).

A run writes into one folder::

    settings.json   what the run was asked for: {"command", "settings", "longforge"}; written on
                    the first run and compared on every rerun
    manifest.json   what the run did (inputs accounted for, outputs, counts); written at the end
    state/          resume state: completion markers of finished shards, partial logs
    ...             the command's outputs

A rerun into the same folder with the same settings resumes (finished work is skipped); with
other settings it is refused with :class:`SettingsMismatch`, which names every setting that
differs, so that the work of two configurations is never mixed. Settings that only change how
the work is carried out (workers, device, batch sizes) are left out of ``settings`` by each
command, so they may change between a run and its resume.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SETTINGS = "settings.json"
MANIFEST = "manifest.json"
STATE = "state"


class SettingsMismatch(ValueError):
    """A run folder holds work made with other settings than the ones asked for now."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("longforge")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(obj, default=str))


class RunFolder:
    """The folder of one run of ``command`` (see the module docstring).

    ``legacy``: names of the settings file older versions wrote (relative to the folder; read
    as a plain settings dict, or from its ``"settings"`` key) and ``legacy_state`` the state
    folder they used: a resume adopts them.
    """

    def __init__(self, path: str | Path, command: str, legacy: tuple[str, ...] = (),
                 legacy_state: str | None = None):
        self.path = Path(path)
        self.command = command
        self.legacy, self.legacy_state = legacy, legacy_state

    @property
    def settings_path(self) -> Path:
        return self.path / SETTINGS

    @property
    def state(self) -> Path:
        return self.path / STATE

    def pinned(self) -> dict | None:
        """The settings the folder was made with, or None for a new folder."""
        if self.settings_path.exists():
            data = json.loads(self.settings_path.read_text())
            if "settings" in data and "command" in data:
                return data
            return {"command": self.command, "settings": data}  # a flat file of an older version
        for name in self.legacy:
            p = self.path / name
            if p.exists():
                data = json.loads(p.read_text())
                return {"command": self.command, "settings": data.get("settings", data)
                        if isinstance(data, dict) and "fingerprint" in data else data}
        return None

    def pin(self, settings: dict, has_results: bool = False) -> bool:
        """Record ``settings`` on the first run; on a rerun, compare. Returns True when the run
        resumes a folder made with the same settings. ``has_results``: the folder already holds
        outputs, so a folder without a settings file is refused (its settings are unknown)."""
        from longforge.corpus.writers import atomic_write_json

        settings = _jsonable(settings)
        old = self.pinned()
        if old is not None:
            if old.get("command") != self.command:
                raise SettingsMismatch(f"{self.path} holds a `longforge {old.get('command')}` run, "
                                       f"not a `longforge {self.command}` one: choose another "
                                       "--output")
            was = old["settings"]
            diff = [f"{k}: {was.get(k, '<unset>')!r} there, {settings.get(k, '<unset>')!r} now"
                    for k in sorted(was.keys() | settings.keys()) if was.get(k) != settings.get(k)]
            if diff:
                raise SettingsMismatch(f"{self.path} holds a run made with other settings "
                                       f"({'; '.join(diff)}): resume it with the same settings "
                                       "or choose another --output")
            self._adopt_legacy()
            return True
        if has_results:
            raise SettingsMismatch(f"{self.path} holds results but no {SETTINGS}, so their "
                                   "settings are unknown: choose another --output")
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.settings_path, {"command": self.command, "settings": settings,
                                               "longforge": _version()})
        return False

    def _adopt_legacy(self) -> None:
        """Move an older version's settings file and state folder to the current names."""
        from longforge.corpus.writers import atomic_write_json

        if not self.settings_path.exists():
            atomic_write_json(self.settings_path, {**self.pinned(), "longforge": _version()})
            for name in self.legacy:
                (self.path / name).unlink(missing_ok=True)
        if self.legacy_state and (self.path / self.legacy_state).is_dir() and not self.state.exists():
            os.replace(self.path / self.legacy_state, self.state)

    def write_manifest(self, manifest: dict) -> Path:
        from longforge.corpus.writers import atomic_write_json

        return atomic_write_json(self.path / MANIFEST, manifest)
