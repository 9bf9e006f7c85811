import json

from typer.testing import CliRunner

from longforge.cli import app

SUBCOMMANDS = ["synth", "analyze", "score", "filter", "eval", "bench", "demo", "export",
               "serve"]


def test_help_lists_subcommands():
    import typer.main

    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0
    group = typer.main.get_command(app)
    assert sorted(group.commands) == sorted(SUBCOMMANDS)
    listed = res.output[res.output.index("Commands"):]  # the listing, not the app's own help
    for name in SUBCOMMANDS:
        assert f" {name} " in listed, name


def test_bad_log_level_is_a_usage_error():
    res = CliRunner().invoke(app, ["--log-level", "LOUD", "eval", "--help"])
    assert res.exit_code == 2 and "unknown level" in res.output


def test_each_subcommand_explains_itself():
    for name in SUBCOMMANDS:
        res = CliRunner().invoke(app, [name, "--help"])
        assert res.exit_code == 0, (name, res.output)
        assert "Usage" in res.output


def _corpus(path, n=6):
    import json

    path.write_text("".join(json.dumps({"id": f"d{i}", "text": f"document {i} " * 60,
                                        "source": "s"}) + "\n" for i in range(n)))
    return path


def test_synth_takes_quiet_after_the_subcommand_and_writes_under_out_by_default(tmp_path,
                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = _corpus(tmp_path / "c.jsonl")
    res = CliRunner().invoke(app, ["synth", str(corpus), "--method", "standard", "-L", "128",
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "synth" / "standard" / "manifest.json").exists()
    assert "pack + write" not in res.output  # no progress bar


def test_eval_and_bench_write_under_out_and_old_out_spelling_warns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("longforge.models.cache_dir", lambda: tmp_path / "cache")  # banks only
    # 1200 tokens with the needle half way: a sample reuses 512 tokens of the shared prefill,
    # so the grid makes (and keeps) a prefix bank
    args = ["eval", "passkey", "--model", "tiny-llama", "--lengths", "1200", "--depths", "0.5",
            "--methods", "dense", "--methods", "quest", "--budgets", "64", "--tail", "4",
            "--max-new", "2", "-q"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "eval" / "passkey" / "results.jsonl").exists()
    assert len(list((tmp_path / "cache" / "prefix-banks").glob("*.safetensors"))) == 1
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "old")])
    assert res.exit_code == 0, res.output
    assert "--out is deprecated" in res.output and (tmp_path / "old" / "settings.json").exists()
    res = CliRunner().invoke(app, [*args, "--out", "a", "-o", "b"])
    assert res.exit_code == 2 and "not both" in res.output


def test_an_eval_grid_in_shards_on_local_workers_equals_one_run(tmp_path):
    args = ["eval", "niah", "--model", "tiny-llama", "--lengths", "300", "--depths", "0,0.5,1",
            "--methods", "dense,quest@64", "--tail", "8", "--max-new", "2", "-q"]
    res = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "one")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "two"), "--num-shards", "2",
                                   "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "two").glob("results*")) == [
        "results.0-of-2.jsonl", "results.1-of-2.jsonl"]
    summary = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two")]
    assert summary[0]["overall"] == summary[1]["overall"]
    assert sum(r["n"] for r in summary[1]["overall"]) == 6
    res = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "x"), "--num-shards", "0"])
    assert res.exit_code == 2 and "--num-shards" in res.output


def test_runtime_problems_are_errors_not_usage_errors(tmp_path):
    corpus = _corpus(tmp_path / "c.jsonl")
    res = CliRunner().invoke(app, ["score", str(corpus), "-o", str(tmp_path / "s"), "--model",
                                   str(tmp_path / "missing.gguf")])
    assert res.exit_code == 1 and "error:" in res.output and "no such GGUF file" in res.output
    assert not (tmp_path / "s" / "settings.json").exists()  # nothing pinned by a typo
    res = CliRunner().invoke(app, ["score", str(corpus), "-o", str(tmp_path / "s"),
                                   "--chunk-size", "1"])
    assert res.exit_code == 2 and "--chunk-size" in res.output  # a bad option: usage


def test_a_context_method_needs_the_whole_question_in_the_tail(tmp_path):
    args = ["eval", "passkey", "--model", "tiny-llama", "--lengths", "300", "--depths", "0.5",
            "--methods", "dense,snapkv-context", "--budgets", "64", "--max-new", "2", "-q"]
    res = CliRunner().invoke(app, [*args, "--tail", "3", "-o", str(tmp_path / "a")])
    assert res.exit_code == 2 and "shorter than the question" in res.output
    res = CliRunner().invoke(app, ["eval", "ppl", "--model", "tiny-llama", "--methods",
                                   "snapkv-context", "-o", str(tmp_path / "b"), "-q"])
    assert res.exit_code == 2 and "no question" in res.output
