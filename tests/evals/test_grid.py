"""The eval grid as an executor task (GridJob)."""
import pytest

from longforge.evals import grid
from longforge.evals.grid import GridJob
from longforge.evals.runner import Results


@pytest.fixture
def loads(monkeypatch):
    """How often GridJob loads a model (the process's kept model forgotten first)."""
    import longforge.models as models

    calls, load = [], models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: calls.append(a) or load(*a, **k))
    grid._loaded.cache_clear()
    yield calls
    grid._loaded.cache_clear()


def _job(out, **kw) -> GridJob:
    return GridJob("passkey", "tiny-llama", (300,), (0.0, 0.5, 1.0), 1, "dense,quest@64",
                   str(out), tail=8, max_new=2, page_size=16, dense_layers=1, seed=0,
                   device="cpu", dtype="auto", **kw)


def test_shards_run_in_one_process_load_the_model_once(tmp_path, loads):
    one = _job(tmp_path / "one")
    sharded = _job(tmp_path / "sharded")
    for k in range(3):
        sharded(k, 3)
    assert len(loads) == 1
    one()
    assert len(loads) == 1  # the same model spec, device and dtype: still the one load
    rows = [{Results.key(r): r for r in Results.folder(j.out).rows} for j in (one, sharded)]
    assert len(rows[0]) == 6 and rows[0] == rows[1]
    GridJob(**{**one.__dict__, "dtype": "float32", "out": str(tmp_path / "fp32")})()
    assert len(loads) == 2  # another dtype is another model
