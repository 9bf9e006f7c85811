"""``longforge bench profile`` on a tiny shape: stages add up, outputs well formed."""
import json

import pytest
from typer.testing import CliRunner

from longforge.bench.cli import app


def test_profile_writes_stages_per_kernel(tmp_path):
    res = CliRunner().invoke(app, [
        "profile", "--shape", "8/2x32", "--contexts", "1024", "--budget", "128", "--repeats",
        "3", "--warmup", "1", "--flush-mb", "1", "--stream-mb", "8", "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "profile.json").read_text())["rows"]
    assert [r["kernel"] for r in rows] == ["torch", "c"]
    for r in rows:
        stages = [x["stage"] for x in r["stages"]]
        assert stages[:2] == ["criticality", "top-K"]
        assert sum(x["us"] for x in r["stages"]) == pytest.approx(r["total_ms"] * 1e3, rel=0.5)
        assert r["limit_ms"] > 0 and r["fraction_of_limit"] > 0
    assert "Command: `longforge bench profile" in (tmp_path / "profile.md").read_text()


def test_profile_refuses_a_context_that_fits_the_budget(tmp_path):
    res = CliRunner().invoke(app, ["profile", "--shape", "4/2x16", "--contexts", "256",
                                   "--budget", "512", "--stream-mb", "8", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "fits the budget" in res.output
