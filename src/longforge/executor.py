"""Executors decide *how* shards run (here, in local processes, or as Ray tasks on a cluster);
steps decide *what* is done to each shard. A task is a picklable callable
``task(shard, num_shards) -> dict`` whose result is JSON-able.

The contract, the same for both executors (docs/scale.md):

* **Completion markers.** When a shard finishes, the process that ran it writes the shard's
  result to ``<state_dir>/shard-<n>.json`` (atomically). A run skips every shard whose marker
  exists, so a killed run, or a run whose driver died, redoes only unfinished shards. On a
  cluster the state folder (like the outputs) must be on storage that every node sees.
* **Errors of the task** (bad input, a bug) stop the run at once with the task's own error.
* **Failures of the executor** (Ray only: the worker process died, its node was lost, the object
  holding the result was lost) resubmit the shard, at most ``max_retries`` times; each
  resubmission is listed in :attr:`RayExecutor.resubmissions`.
* The results are the same whichever executor ran the shards.
* **Stopping.** SIGTERM (``kill``) or Ctrl-C on a run with local worker processes stops the
  workers too (they would otherwise run on, orphaned, and keep the CPU); finished shards keep
  their markers.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from longforge.corpus.writers import atomic_write_json
from longforge.progress import progress, say, set_quiet

Task = Callable[[int, int], dict]
EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install 'longforge[ray]'"


class ExecutorError(RuntimeError):
    """The executor cannot run (Ray missing or unreachable), or a shard failed on the executor's
    side more often than allowed."""


def check_options(kind: str, workers: int | None, cpus_per_task: float,
                  gpus_per_task: float) -> list[str]:
    """Messages naming each bad execution option (empty when all are fine)."""
    errors = []
    if kind not in EXECUTORS:
        errors.append(f"--executor must be one of {', '.join(EXECUTORS)}, not {kind!r}")
    low = 0 if kind == "ray" else 1
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool)
                                or workers < low):
        errors.append(f"--workers must be an integer >= {low}"
                      + (" (0: as many shards at once as the cluster takes)" if low == 0 else "")
                      + f", not {workers!r}")
    if not (isinstance(cpus_per_task, (int, float)) and cpus_per_task > 0):
        errors.append(f"--cpus-per-task must be a number > 0, not {cpus_per_task!r}")
    if not (isinstance(gpus_per_task, (int, float)) and gpus_per_task >= 0):
        errors.append(f"--gpus-per-task must be a number >= 0, not {gpus_per_task!r}")
    if kind == "local" and gpus_per_task:
        errors.append("--gpus-per-task needs --executor ray (the local executor does not "
                      "place tasks; --device chooses the device)")
    return errors


def done_path(state_dir: Path, shard: int) -> Path:
    return Path(state_dir) / f"shard-{shard:05d}.json"


def run_shard(task: Task, shard: int, num_shards: int, state_dir, quiet: bool = False):
    """Run one shard and write its completion marker; ``(shard, result)``."""
    if quiet:
        set_quiet(True)
    result = task(shard, num_shards)
    if state_dir is not None:
        atomic_write_json(done_path(Path(state_dir), shard), result)
    return shard, result


def _run_job(args) -> tuple[int, dict]:
    return run_shard(*args)


@contextmanager
def sigterm_exits() -> Iterator[None]:
    """While inside, SIGTERM ends this process through ``SystemExit`` (status 143), so that
    ``with`` blocks unwind: a worker pool's exit terminates its processes. Python's default,
    dying at once, would leave the workers running. A no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class LocalExecutor:
    """Run shards in ``workers`` processes (``workers=1``: in this process, easiest to debug)."""

    kind = "local"

    def __init__(self, workers: int = 1, state_dir: str | Path | None = None, desc: str = "shards"):
        self.workers = max(1, workers)
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.desc = desc
        self.resubmissions: list[dict] = []

    def finished(self, num_shards: int) -> dict[int, dict]:
        """Results of shards that an earlier run already finished (their markers)."""
        out: dict[int, dict] = {}
        if self.state_dir is None:
            return out
        for s in range(num_shards):
            p = done_path(self.state_dir, s)
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
                s, r = _run_job(job)
                results[s] = r
                bar.update(1)
        else:
            ctx = mp.get_context("spawn")
            with sigterm_exits(), ctx.Pool(min(self.workers, len(jobs))) as pool:
                for s, r in pool.imap_unordered(_run_job, jobs):
                    results[s] = r
                    bar.update(1)
        bar.close()
        return [results[s] for s in range(num_shards)]

    def describe(self) -> dict:
        return {"kind": self.kind, "workers": self.workers}


def import_ray():
    """The ``ray`` module, or a one-line :class:`ExecutorError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


def executor_failures(ray) -> tuple[type[BaseException], ...]:
    """Ray errors that mean the shard's process or node went away (or the object holding its
    result was lost), not that the shard's own code failed: these shards are resubmitted."""
    ex = ray.exceptions
    return (ex.WorkerCrashedError, ex.NodeDiedError, ex.ObjectLostError, ex.OutOfMemoryError,
            ex.LocalRayletDiedError, ex.RayActorError)


class RayExecutor(LocalExecutor):
    """Shards as Ray tasks, with the contract of the module docstring.

    ``address``: the cluster to join (``auto``, ``host:port`` or ``ray://host:port``); None
    starts a local one for this run (and stops it at the end). ``cpus_per_task`` and
    ``gpus_per_task`` are the resources each shard asks for (fractions allowed), ``workers`` the
    most shards in flight at once (0: as many as the cluster takes), ``max_retries`` the
    resubmissions allowed per shard after executor failures.
    """

    kind = "ray"

    def __init__(self, workers: int = 0, state_dir: str | Path | None = None,
                 desc: str = "shards", *, address: str | None = None,
                 cpus_per_task: float = 1.0, gpus_per_task: float = 0.0, max_retries: int = 3):
        super().__init__(1, state_dir, desc)
        self.max_in_flight = workers or None
        self.address, self.max_retries = address, max_retries
        self.cpus_per_task, self.gpus_per_task = cpus_per_task, gpus_per_task

    def describe(self) -> dict:
        return {"kind": self.kind, "address": self.address, "max_in_flight": self.max_in_flight,
                "cpus_per_task": self.cpus_per_task, "gpus_per_task": self.gpus_per_task,
                "max_retries": self.max_retries, "resubmissions": self.resubmissions}

    def _connect(self, ray) -> tuple[bool, str | None]:
        """Join the cluster, or start a local one in a temporary folder of its own (under
        ``$RAY_TMPDIR`` when set); (whether this call connected, that folder)."""
        if ray.is_initialized():
            return False, None
        local = self.address is None and not os.environ.get("RAY_ADDRESS")
        tmp = tempfile.mkdtemp(prefix="longforge-ray-", dir=os.environ.get("RAY_TMPDIR")) if local else None
        try:
            ray.init(address=self.address, include_dashboard=False, logging_level="warning",
                     **({"_temp_dir": tmp} if tmp else {}))
        except (ConnectionError, ValueError, RuntimeError) as exc:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray cluster"
            raise ExecutorError(f"cannot reach {where}: {exc}") from None
        return True, tmp

    def run(self, task: Task, num_shards: int) -> list[dict[str, Any]]:
        ray = import_ray()
        connected, tmp = self._connect(ray)
        ok = False
        try:
            results = self._run(ray, task, num_shards)
            ok = True
            return results
        finally:
            if connected:
                ray.shutdown()
            if tmp and ok:  # the local cluster's logs go with it, unless the run failed
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp:
                say(f"the local Ray cluster's logs are in {tmp}")

    def _run(self, ray, task: Task, num_shards: int) -> list[dict[str, Any]]:
        results = self.finished(num_shards)
        todo = deque(s for s in range(num_shards) if s not in results)
        bar = progress(total=num_shards, initial=len(results), desc=self.desc, unit="shard")
        remote = ray.remote(run_shard)
        options = dict(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task,
                       max_retries=0, retry_exceptions=False)  # resubmission is decided below
        task_ref = ray.put(task)
        state = str(self.state_dir) if self.state_dir is not None else None
        in_flight: dict[Any, int] = {}
        attempts: dict[int, int] = {}
        failures = executor_failures(ray)
        try:
            while todo or in_flight:
                while todo and (self.max_in_flight is None or len(in_flight) < self.max_in_flight):
                    s = todo.popleft()
                    ref = remote.options(name=f"longforge {self.desc} shard {s}", **options).remote(
                        task_ref, s, num_shards, state, True)
                    in_flight[ref] = s
                [ref], _ = ray.wait(list(in_flight), num_returns=1)
                s = in_flight.pop(ref)
                try:
                    _, results[s] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the task's own error: no retry
                    cause = exc.cause if isinstance(exc.cause, BaseException) else None
                    if cause is None:
                        raise
                    raise cause from exc
                except failures as exc:
                    marker = done_path(self.state_dir, s) if self.state_dir is not None else None
                    if marker is not None and marker.exists():  # it finished before it went
                        results[s] = json.loads(marker.read_text())
                    else:
                        self._resubmit(s, attempts, exc)
                        todo.appendleft(s)
                        continue
                bar.update(1)
        finally:
            for ref in in_flight:
                ray.cancel(ref, force=True)
            bar.close()
        return [results[s] for s in range(num_shards)]

    def _resubmit(self, shard: int, attempts: dict[int, int], exc: BaseException) -> None:
        n = attempts[shard] = attempts.get(shard, 0) + 1
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if n > self.max_retries:
            raise ExecutorError(f"{self.desc}: shard {shard} failed {n} times on the executor's "
                                f"side, the last time with {reason}; giving up") from exc
        self.resubmissions.append({"shard": shard, "attempt": n, "reason": reason})
        say(f"{self.desc}: shard {shard}: {reason}; resubmitting ({n}/{self.max_retries})")


def make_executor(kind: str = "local", workers: int | None = None, state_dir=None,
                  desc: str = "shards", *, ray_address: str | None = None,
                  cpus_per_task: float = 1.0, gpus_per_task: float = 0.0):
    """The executor ``kind`` (see :data:`EXECUTORS`). ``workers``: local processes, or for Ray
    the most shards in flight (None: 1 local process, or as many as the cluster takes)."""
    errors = check_options(kind, workers, cpus_per_task, gpus_per_task)
    if errors:
        raise ValueError("; ".join(errors))
    if kind == "local":
        return LocalExecutor(workers or 1, state_dir, desc)
    import_ray()  # a missing Ray fails here, before any work
    return RayExecutor(workers or 0, state_dir, desc, address=ray_address,
                       cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task)
