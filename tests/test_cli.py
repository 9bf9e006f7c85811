from typer.testing import CliRunner

from longforge.cli import app

SUBCOMMANDS = ["synth", "analyze", "score", "filter", "eval", "bench", "demo"]


def test_help_lists_subcommands():
    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0
    for name in SUBCOMMANDS:
        assert name in res.output, name


def test_each_subcommand_explains_itself():
    for name in SUBCOMMANDS:
        res = CliRunner().invoke(app, [name, "--help"])
        assert res.exit_code == 0, (name, res.output)
        assert "Usage" in res.output
