from typer.testing import CliRunner

from longforge.cli import app

SUBCOMMANDS = ["synth", "analyze", "score", "filter", "eval", "bench", "demo"]


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
