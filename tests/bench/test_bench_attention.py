"""``longforge bench attention`` on tiny shapes: well-formed outputs, byte arithmetic, no GPU."""
import json

import pytest
import torch
from typer.testing import CliRunner

from longforge.bench import attention
from longforge.bench.cli import app


def test_shapes_parse():
    assert attention.parse_shape("32x128") == attention.Shape(32, 32, 128)
    assert attention.parse_shape("32/8x128").label == "GQA 32/8x128"
    assert attention.parse_shape("32x128").label == "MHA 32x128"
    for bad in ("32", "32/5x128", "ax128"):
        with pytest.raises(ValueError):
            attention.parse_shape(bad)


def test_bytes_give_the_spec_ceilings():
    gqa = attention.parse_shape("32/8x128")  # docs/speed.md: 1/16 + 1/16 at 32K, budget 2048
    dense = attention.dense_bytes(gqa, 32768, 4)
    assert dense == 2 * 32768 * 8 * 128 * 4
    assert attention.quest_bytes(gqa, 32768, 2048, 16, 4) * 8 == dense
    assert attention.dense_bytes(gqa, 131072, 4) / attention.quest_bytes(
        gqa, 131072, 2048, 16, 4) == pytest.approx(12.8)
    assert attention.quest_bytes(gqa, 1000, 2048, 16, 4) == attention.dense_bytes(gqa, 1000, 4)


ARGS = ["attention", "--shapes", "4x16,32/8x128", "--contexts", "256,1024", "--budgets",
        "64,2048", "--kernels", "torch,c", "--repeats", "2", "--warmup", "1", "--flush-mb", "1",
        "--stream-mb", "8"]


def test_attention_bench_writes_json_markdown_png(tmp_path):
    res = CliRunner().invoke(app, [*ARGS, "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "results.json").read_text())
    rows = data["rows"]
    assert len(rows) == 2 * 2 * 2 * 2  # shapes x contexts x budgets x kernels
    for r in rows:
        for key in ("device", "shape", "context", "budget", "kernel", "quest_ms",
                    "dense_sdpa_ms", "dense_matmul_ms", "speedup", "quest_fraction_of_limit",
                    "dense_fraction_of_limit", "torch", "threads", "cpu"):
            assert key in r, key
        assert r["quest_ms"] > 0 and r["speedup"] > 0 and r["quest_fraction_of_limit"] > 0
        assert r["faster_dense_ms"] == min(r["dense_sdpa_ms"], r["dense_matmul_ms"])
    assert 0 < data["meta"]["bandwidth_GBps_min"] <= data["meta"]["bandwidth_GBps_max"]
    assert all(r["bandwidth_GBps"] > 0 for r in rows)
    md = (tmp_path / "results.md").read_text()
    assert "Command: `longforge bench attention --device cpu" in md
    assert "synthetic keys and values" in md and "Headline: GQA 32/8x128" in md
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cuda_without_gpu_says_so_and_measures_nothing(tmp_path):
    res = CliRunner().invoke(app, ["attention", "--device", "cuda", "-o", str(tmp_path / "o")])
    assert res.exit_code != 0
    assert "no CUDA GPU found" in res.output
    assert not (tmp_path / "o").exists()


def test_bad_options_are_refused(tmp_path):
    for extra in (["--kernels", "fortran"], ["--shapes", "32"], ["--device", "tpu"]):
        res = CliRunner().invoke(app, [*ARGS, *extra, "-o", str(tmp_path)])
        assert res.exit_code == 2, (extra, res.output)
    assert not (tmp_path / "results.json").exists()
