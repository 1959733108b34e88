"""Every command's --help: on stdout, exit 0, each option with its default; `vislora --help` lists the commands."""

from __future__ import annotations

import re

import pytest

from vislora.cli import COMMANDS, main

# A default each command's help must show (an option written without help text included).
SHOWN = {"classify": r"--batch-size BATCH_SIZE\s+per process \(default: 32\)", "predict": r"--top-k TOP_K\s+\(default: 5\)",
         "dreambooth": r"--steps STEPS\s+[^\n]*\(default: 600\)", "style": r"--rank RANK\s+\(default: 4\)",
         "generate": r"--steps STEPS\s+\(default: 20\)", "merge": r"--to \{.*\}\s+\(default: vislora\)",
         "convert": r"--to \{", "resize": r"--to \{.*\}\s+\(default: vislora\)",
         "extract": r"\(default: 0.0\)", "inspect": "--json", "studio": r"--port PORT\s+\(default: 7860\)"}


def test_vislora_help_is_on_stdout_and_exits_0(capsys):
    assert main(["--help"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and all(name in out for name in COMMANDS)
    assert main([]) == 2 and "usage: vislora [--debug] COMMAND" in capsys.readouterr().err  # no command: a usage error


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_help_shows_defaults(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")  # argparse wraps at the terminal's width
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    out, err = capsys.readouterr()
    assert done.value.code == 0 and err == "" and out.startswith("usage: ")
    assert re.search(SHOWN[command], out), out
    assert "(default: None)" not in out and "(default: False)" not in out
