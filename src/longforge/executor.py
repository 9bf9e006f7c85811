"""Executors decide *how* shards run (here, or in local processes, or on Ray); steps decide *what*
is done to each shard. A task is a picklable callable ``task(shard, num_shards) -> dict``.

Resume: when a shard finishes, its result is written to ``<state_dir>/shard-<n>.json``; a
re-run skips shards whose result file exists, so a killed run redoes only unfinished shards.
"""
from __future__ import annotations

import json
import multiprocessing as mp
from collections.abc import Callable
from pathlib import Path
from typing import Any

from longforge.corpus.writers import atomic_write_json
from longforge.progress import progress

Task = Callable[[int, int], dict]


def _done_path(state_dir: Path, shard: int) -> Path:
    return state_dir / f"shard-{shard:05d}.json"


def _run_one(args) -> tuple[int, dict]:
    task, shard, num_shards, state_dir = args
    result = task(shard, num_shards)
    if state_dir is not None:
        atomic_write_json(_done_path(Path(state_dir), shard), result)
    return shard, result


class LocalExecutor:
    """Run shards in ``workers`` processes (``workers=1``: in this process, easiest to debug)."""

    def __init__(self, workers: int = 1, state_dir: str | Path | None = None, desc: str = "shards"):
        self.workers = max(1, workers)
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.desc = desc

    def finished(self, num_shards: int) -> dict[int, dict]:
        """Results of shards that an earlier run already finished."""
        out: dict[int, dict] = {}
        if self.state_dir is None:
            return out
        for s in range(num_shards):
            p = _done_path(self.state_dir, s)
            if p.exists():
                out[s] = json.loads(p.read_text())
        return out

    def run(self, task: Task, num_shards: int) -> list[dict[str, Any]]:
        """Run every unfinished shard; return all results ordered by shard."""
        results = self.finished(num_shards)
        todo = [s for s in range(num_shards) if s not in results]
        jobs = [(task, s, num_shards, self.state_dir) for s in todo]
        bar = progress(total=num_shards, initial=len(results), desc=self.desc, unit="shard")
        if self.workers == 1 or len(jobs) <= 1:
            for job in jobs:
                s, r = _run_one(job)
                results[s] = r
                bar.update(1)
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(min(self.workers, len(jobs))) as pool:
                for s, r in pool.imap_unordered(_run_one, jobs):
                    results[s] = r
                    bar.update(1)
        bar.close()
        return [results[s] for s in range(num_shards)]


class RayExecutor(LocalExecutor):
    """Same contract as :class:`LocalExecutor`, with shards as Ray tasks (``pip install ray``)."""

    def run(self, task: Task, num_shards: int) -> list[dict[str, Any]]:
        try:
            import ray
        except ImportError as exc:
            raise RuntimeError("the Ray executor needs 'pip install ray'") from exc
        if not ray.is_initialized():
            ray.init()
        results = self.finished(num_shards)
        remote = ray.remote(_run_one)
        refs = [remote.remote((task, s, num_shards, self.state_dir))
                for s in range(num_shards) if s not in results]
        bar = progress(total=num_shards, initial=len(results), desc=self.desc, unit="shard")
        while refs:
            ready, refs = ray.wait(refs)
            for s, r in ray.get(ready):
                results[s] = r
                bar.update(1)
        bar.close()
        return [results[s] for s in range(num_shards)]


def make_executor(kind: str = "local", workers: int = 1, state_dir=None, desc: str = "shards"):
    if kind == "local":
        return LocalExecutor(workers, state_dir, desc)
    if kind == "ray":
        return RayExecutor(workers, state_dir, desc)
    raise ValueError(f"unknown executor {kind!r} (local, ray)")
