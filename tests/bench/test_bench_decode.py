"""``longforge bench decode`` on tiny models: well-formed outputs, synthetic caches, byte counts."""
import json

import torch
from typer.testing import CliRunner

from longforge.bench import decode
from longforge.bench.cli import app
from longforge.sparse.policies import Dense, Quest


def test_synthetic_cache_and_bytes():
    model = decode.random_llama("tiny", 4096, seed=0)
    cfg = model.config
    cache = decode.synthetic_cache(model, 1000, extra=8, page_size=16)
    assert cache.get_seq_length() == 1000
    st = cache.layers[0].store
    assert st.length == 1000 and st.capacity >= 1008
    blk = st.k[:, :, :992].unflatten(2, (-1, 16))
    assert torch.equal(st.meta[:, :, :62, : cfg.head_dim], blk.amax(dim=3))
    one = 2 * 1000 * cfg.num_key_value_heads * cfg.head_dim * 4
    assert decode.kv_bytes(cache, Dense(), 16) == cfg.num_hidden_layers * one
    quest = decode.kv_bytes(cache, Quest(256, 16, dense_layers=2), 16)
    sparse = 63 * 2 * cfg.head_dim * cfg.num_key_value_heads * 4 \
        + 2 * 256 * cfg.num_key_value_heads * cfg.head_dim * 4
    assert quest == 2 * one + (cfg.num_hidden_layers - 2) * sparse
    emb = cfg.vocab_size * cfg.hidden_size * 4
    assert decode.weight_bytes(model) == sum(p.numel() * 4 for p in model.parameters()) - emb


def test_decode_bench_writes_json_and_markdown(tmp_path):
    res = CliRunner().invoke(app, [
        "decode", "--contexts", "512", "--llama", "tiny", "--gemma", "tiny-gemma3",
        "--gemma-contexts", "256", "--steps", "2", "--warmup", "1", "--budget", "64",
        "--stream-mb", "8", "--kernel", "c", "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["part"] for r in data["rows"]] == ["synthetic cache", "real prefill"]
    for r in data["rows"]:
        assert r["dense_ms"] > 0 and r["quest_ms"] > 0 and r["speedup"] > 0
        assert r["quest_kv_bytes"] < r["dense_kv_bytes"]
        assert len(r["steps_ms"]["quest"]) == 2
        assert r["quest_torch_ms"] > 0  # the default PyTorch path, timed in the same run
    assert data["meta"]["settings"]["kernel"] == "c"
    md = (tmp_path / "results.md").read_text()
    assert "Command: `longforge bench decode --contexts 512 --llama tiny" in md
    assert "synthetic keys and values" in md and "real dense prefill" in md


def test_decode_bench_in_bf16_with_the_triton_kernel_through_its_interpreter(tmp_path):
    """The GPU configuration (bf16, Triton) on CPU tensors: Triton's interpreter runs the same
    kernels (tests/conftest.py sets TRITON_INTERPRET=1)."""
    res = CliRunner().invoke(app, [
        "decode", "--contexts", "256", "--llama", "tiny", "--model", "tiny-llama",
        "--model-contexts", "128", "--steps", "1", "--warmup", "1", "--budget", "64",
        "--stream-mb", "8", "--device", "cpu", "--dtype", "bf16", "--kernel", "triton",
        "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["dtype"] == "bf16" and data["meta"]["settings"]["kernel"] == "triton"
    for r in data["rows"]:
        assert r["dense_ms"] > 0 and r["quest_ms"] > 0 and r["quest_torch_ms"] is None
        assert r["quest_kv_bytes"] < r["dense_kv_bytes"]
    pinned = json.loads((tmp_path / "settings.json").read_text())
    cmd = data["meta"]["command"]
    assert "--kernel triton" in cmd and "--device cpu --dtype bf16" in cmd
    assert "bf16" in json.dumps(pinned) and "Batch 1, bf16" in (tmp_path / "results.md").read_text()


def test_decode_bench_refuses_a_kernel_the_device_does_not_run(tmp_path):
    res = CliRunner().invoke(app, ["decode", "--device", "cpu", "--kernel", "cuda-only",
                                   "-o", str(tmp_path)])
    assert res.exit_code == 2 and "does not run on cpu" in res.output
    assert not (tmp_path / "settings.json").exists()
    s = decode.checked(decode.Settings(kernel="auto"))
    assert (s.kernel, s.dtype) == ("c", "fp32")
