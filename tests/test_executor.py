from longforge.executor import LocalExecutor


class CountingTask:
    """Picklable task that records which shards it ran and can fail on one."""

    def __init__(self, log_dir, fail_on=None):
        self.log_dir, self.fail_on = log_dir, fail_on

    def __call__(self, shard, num_shards):
        if shard == self.fail_on:
            raise RuntimeError(f"shard {shard} killed")
        (self.log_dir / f"ran-{shard}").touch()
        return {"shard": shard, "square": shard * shard}


def test_resume_skips_finished_shards(tmp_path):
    state = tmp_path / "state"
    ex = LocalExecutor(workers=1, state_dir=state)
    try:
        ex.run(CountingTask(tmp_path, fail_on=2), 4)
    except RuntimeError:
        pass
    assert sorted(p.name for p in tmp_path.glob("ran-*")) == ["ran-0", "ran-1"]
    for p in tmp_path.glob("ran-*"):
        p.unlink()
    results = ex.run(CountingTask(tmp_path), 4)
    assert [r["square"] for r in results] == [0, 1, 4, 9]
    assert sorted(p.name for p in tmp_path.glob("ran-*")) == ["ran-2", "ran-3"]


class SleepingTask:
    """Picklable task that writes its worker's pid, then sleeps far longer than the test."""

    def __init__(self, log_dir):
        self.log_dir = log_dir

    def __call__(self, shard, num_shards):
        import os
        import time

        (self.log_dir / f"pid-{shard}").write_text(str(os.getpid()))
        time.sleep(600)
        return {}


def test_sigterm_to_the_driver_stops_its_worker_processes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    code = ("import sys; sys.path.insert(0, sys.argv[2]); from pathlib import Path; "
            "from test_executor import SleepingTask; from longforge.executor import LocalExecutor; "
            "LocalExecutor(workers=2).run(SleepingTask(Path(sys.argv[1])), 2)")
    driver = subprocess.Popen([sys.executable, "-c", code, str(tmp_path),
                               str(Path(__file__).parent)])

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        with open(f"/proc/{pid}/stat") as f:   # a zombie is dead
            return f.read().split(")")[-1].split()[0] != "Z"

    try:
        deadline = time.time() + 120
        while len(list(tmp_path.glob("pid-*"))) < 2 and time.time() < deadline:
            time.sleep(0.2)
        pids = [int(p.read_text()) for p in tmp_path.glob("pid-*")]
        assert len(pids) == 2 and all(map(alive, pids))
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=60) == 143
        deadline = time.time() + 30
        while any(map(alive, pids)) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(map(alive, pids)), "worker processes outlived their driver"
    finally:
        driver.kill()
        for p in tmp_path.glob("pid-*"):
            try:
                os.kill(int(p.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_process_pool_gives_same_results(tmp_path):
    res = LocalExecutor(workers=2).run(CountingTask(tmp_path), 5)
    assert [r["shard"] for r in res] == list(range(5))


def test_without_ray_the_ray_executor_is_a_one_line_error(tmp_path, monkeypatch):
    import sys

    import pytest
    from typer.testing import CliRunner

    from longforge.cli import app
    from longforge.executor import ExecutorError, make_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ExecutorError, match=r"pip install 'longforge\[ray\]'"):
        make_executor("ray", state_dir=tmp_path).run(CountingTask(tmp_path), 2)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "one document"}\n')
    r = CliRunner().invoke(app, ["synth", str(corpus), "-o", str(tmp_path / "out"), "-q",
                                 "--method", "standard", "--executor", "ray"])
    assert r.exit_code == 1 and r.output.strip().splitlines() == [
        "error: --executor ray needs Ray, which is not installed: pip install 'longforge[ray]'"]


def test_execution_options_are_checked_by_name():
    from longforge.executor import check_options

    assert check_options("local", 1, 1, 0) == [] and check_options("ray", 0, 0.5, 0.25) == []
    assert "--executor" in check_options("slurm", 1, 1, 0)[0]
    assert "--workers" in check_options("local", 0, 1, 0)[0]
    assert "--cpus-per-task" in check_options("ray", None, 0, 0)[0]
    assert "--gpus-per-task needs --executor ray" in check_options("local", 1, 1, 1)[0]
