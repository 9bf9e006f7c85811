"""``longforge serve``'s options: bad ones are usage errors before anything is loaded, a model
that is not there is an ``error:`` exit 1."""
import pytest
import typer
from typer.testing import CliRunner

from longforge.cli import app
from longforge.serve.cli import parse_bytes


def test_byte_sizes():
    assert parse_bytes("2GiB", "--x") == 2 << 30
    assert parse_bytes("512M", "--x") == 512 * 10**6
    assert parse_bytes("1000", "--x") == 1000
    with pytest.raises(typer.BadParameter):
        parse_bytes("lots", "--x")


@pytest.mark.parametrize("args", [["--block-tokens", "20"], ["--kv-cache-bytes", "lots"],
                                  ["--max-concurrent", "0"], ["--prefill-chunk", "16"],
                                  ["--dense-layers", "some"]])
def test_bad_options_are_usage_errors(args):
    res = CliRunner().invoke(app, ["serve", "--model", "tiny-llama", *args])
    assert res.exit_code == 2, res.output


def test_a_missing_model_is_an_error_exit_1(tmp_path):
    res = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "none.gguf")])
    assert res.exit_code == 1 and "error:" in res.output
