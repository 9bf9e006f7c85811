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
