"""benchmarks/synth/bench_queries.py at a tiny scale: every path runs on the same segments and
the report holds what the lead reads (speed, keyword yield, compute limit)."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_queries_runs_every_path_on_a_tiny_model(tmp_path, monkeypatch):
    from longforge import models

    writer = _load("gguf_writer", ROOT / "tests" / "models" / "gguf_writer.py")
    bench = _load("bench_queries", ROOT / "benchmarks" / "synth" / "bench_queries.py")
    monkeypatch.setenv("LONGFORGE_CACHE", str(tmp_path / "cache"))
    gguf = writer.write_tiny_qwen2(tmp_path / "tiny.gguf", models.tiny_model("tiny-qwen2", seed=3))
    import torch

    threads = torch.get_num_threads()
    try:
        res = bench.main(["--segments", "2", "--threads", "1", "--max-new-tokens", "4",
                          "--gemma", str(gguf), "--qwen", str(gguf), "--out", str(tmp_path / "b")])
    finally:
        torch.set_num_threads(threads)
    assert [r["path"] for r in res["paths"]] == list(bench.PATHS)
    for r in res["paths"]:
        assert r["segments"] == 2 and r["wall_s"] > 0 and r["flops"] > 0
        assert 0 < r["compute_limit_s"] and r["decode_tokens"] > 0
    today, fast = res["paths"][0], res["paths"][1]
    assert today["speedup_vs_today"] == 1.0
    # the fast path prefills the fixed part once, today's path with every segment
    assert today["prefill_tokens"] - fast["prefill_tokens"] == fast["prefix_tokens"] > 0
    assert res["fast_same_queries_as_today"] == 2
    by = {r["path"]: r for r in res["paths"]}
    assert by["gemma-fewshot-hf-fast-bf16"]["precision"] == "bf16"
    assert by["qwen-instruct-hf-bf16"]["settings"]["dtype"] == "bfloat16"
    assert "dtype" not in by["qwen-instruct-hf"]["settings"]
    assert set(res["bf16_same_queries_as_fp32"]) == {"gemma-fewshot-hf-fast-bf16", "qwen-instruct-hf-bf16"}
    assert res["matmul_gflops_bf16"] > 0
    assert json.loads((tmp_path / "b" / "bench.json").read_text())["segments"] == 2
    assert "| gemma-fewshot-hf-today |" in (tmp_path / "b" / "bench.md").read_text()
