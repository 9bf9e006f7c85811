import shlex
from dataclasses import dataclass, field

from longforge.bench.common import command_line


@dataclass
class _Settings:
    contexts: list = field(default_factory=list)
    model_contexts: tuple = (16384, 32768)
    out: str = "out/bench/decode dir"


def test_the_recorded_command_is_the_current_spelling_and_survives_the_shell():
    cmd = command_line("decode", _Settings())
    assert shlex.split(cmd) == ["longforge", "bench", "decode", "--contexts", "",
                                "--model-contexts", "16384,32768",
                                "--output", "out/bench/decode dir"]
