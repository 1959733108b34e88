"""Property: whatever values a user types for a command's flags, its validation step either accepts them or
refuses them with a UsageError (one line naming the flag); argparse's own refusals exit with status 2. No other
exception, and nothing is written."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vislora import checks
from vislora.diffusion import generate
from vislora.recipes import classify_vit, dreambooth_sd

NUMBERS = st.one_of(st.integers(-10**30, 10**30).map(str),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["nan", "-inf", "1e999", "-0", "0x10", "1_000", " 3 ", ""]))
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=24)
VALUES = st.one_of(NUMBERS, NUMBERS, NUMBERS, TEXT)  # mostly numbers: most flags take one

COMMANDS = {
    "dreambooth": (lambda argv: dreambooth_sd.parse_args(argv, "dreambooth"), dreambooth_sd.RULES,
                   ["--model", "m", "--instance-data", "d", "--instance-prompt", "p"]),
    "style": (lambda argv: dreambooth_sd.parse_args(argv, "style"), dreambooth_sd.RULES,
              ["--model", "m", "--data", "d"]),
    "classify": (classify_vit.parse_args, classify_vit.RULES, ["--data", "d"]),
    "generate": (generate.parse_args, generate.RULES, ["--model", "m", "--prompt", "p"]),
}


def _validate(command: str, flags: dict[str, str]) -> str:
    parse, rules, required = COMMANDS[command]
    argv = list(required)
    for name, value in flags.items():
        argv += [checks.flag_name(name), value]
    if "out" not in flags:
        argv += ["--out", "out.png" if command == "generate" else "out"]
    try:
        args = parse(argv)
    except SystemExit as stop:
        assert stop.code == 2
        return "argparse"
    try:
        checks.check(args, rules)
    except checks.UsageError as e:
        assert "\n" not in str(e) and str(e).startswith("--")
        return "refused"
    return "accepted"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_any_flag_values_are_accepted_or_refused_in_one_line(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # relative --out values land here, if anything were written
    seen = {"argparse": 0, "refused": 0, "accepted": 0}

    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=st.data())
    def one_command_line(data):
        rules = COMMANDS[command][1]
        names = data.draw(st.lists(st.sampled_from(sorted(rules)), min_size=1, max_size=4, unique=True))
        seen[_validate(command, {name: data.draw(VALUES) for name in names})] += 1
        capsys.readouterr()

    one_command_line()
    assert seen["refused"] > 5 and seen["accepted"] > 0, seen  # both ways were exercised
    assert not any(tmp_path.iterdir())  # validation writes nothing


def test_each_rule_refuses_the_obvious(tmp_path):
    """Sanity for the property: the tables refuse NaN for every float flag and -1 for every count."""
    for command, (parse, rules, required) in COMMANDS.items():
        args = vars(parse(required + ["--out", "o.png" if command == "generate" else "o"]))
        for name, rule in rules.items():
            if isinstance(args.get(name), float) or name in ("alpha", "snr_gamma", "conv_alpha", "crop_pct"):
                assert rule(float("nan")), (command, name)
            elif isinstance(args.get(name), int) and not isinstance(args.get(name), bool):
                assert rule(-1), (command, name)
