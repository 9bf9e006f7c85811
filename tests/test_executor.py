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
