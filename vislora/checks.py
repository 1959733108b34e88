"""One validation step per command: a table of constraints, flag -> rule, checked before anything is loaded.

    RULES = {"lr": positive("1e-4"), "warmup": share(), "steps": count(1), "out": writable_folder()}
    check(args, RULES)     # UsageError: "--lr nan: must be a finite number > 0 (e.g. --lr 1e-4)"

A rule is a function of the value that returns None when the value works, or what is wrong with it and how
to fix it. Flags left unset (None) are not checked: their defaults are resolved later. Every refusal names
the flag, the value and the fix, in one line; commands print it as `error: ...` with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import VisloraError

Rule = Callable[[Any], "str | None"]


class UsageError(VisloraError):
    """A flag's value (or a combination of flags) cannot work; the message names the flag, value and fix."""


class Parser(argparse.ArgumentParser):
    """argparse with its own refusals (unknown flag, a value that is not a number) in one line, exit status 2."""

    def error(self, message: str):  # noqa: D102 (argparse's hook)
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def check(values: argparse.Namespace | Mapping[str, Any], rules: Mapping[str, Rule]) -> None:
    """Apply each flag's rule to its value (None: unset, not checked); UsageError at the first refusal."""
    values = vars(values) if isinstance(values, argparse.Namespace) else values
    for name, rule in rules.items():
        value = values.get(name)
        if value is None:
            continue
        problem = rule(value)
        if problem:
            raise UsageError(f"{flag_name(name)} {_shown(value)}: {problem}")


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(_shown(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # as typed: --lr -1, not -1.0
    return str(value)


# -- numbers -------------------------------------------------------------------------------------------------
def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False, example: str | None = None) -> Rule:
    """A finite number in [low, high] (either end open with low_open/high_open, or absent)."""
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")
    need = "a finite number" + (" " + " and ".join(bounds) if bounds else "")

    def rule(value: float) -> str | None:
        try:
            x = float(value)
        except (TypeError, ValueError):
            return f"must be {need}"
        fine = (math.isfinite(x) and (low is None or (x > low if low_open else x >= low))
                and (high is None or (x < high if high_open else x <= high)))
        return None if fine else f"must be {need}" + (f" (e.g. {example})" if example else "")

    return rule


def positive(example: str | None = None) -> Rule:
    """A finite number > 0 (learning rates, alphas, gammas)."""
    return number(0, low_open=True, example=example)


def share(*, closed: bool = False, example: str | None = None) -> Rule:
    """A share of a whole: in [0, 1) (warm-up, dropout), or [0, 1] with closed=True (probabilities)."""
    return number(0, 1, high_open=not closed, example=example)


def count(least: int = 1) -> Rule:
    """A whole number >= least (steps, ranks, sizes, workers)."""

    def rule(value: int) -> str | None:
        return None if isinstance(value, int) and value >= least else f"must be a whole number >= {least}"

    return rule


def each(rule: Rule) -> Rule:
    """The rule applied to every item of a list flag (nargs)."""

    def every(values: list) -> str | None:
        return next((f"{v}: {p}" for v in values for p in [rule(v)] if p), None)

    return every


# -- paths and the machine -------------------------------------------------------------------------------------
def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable_below(path: Path) -> str | None:
    """None if `path` (or the folders to make above it) can be created or written; else the problem."""
    existing = _nearest_existing(path.parent if not path.exists() else path)
    if not existing.is_dir():
        return f"{existing} is a file, not a folder; choose another path"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write in {existing} (read-only or not yours); choose a folder you can write"
    return None


def writable_folder() -> Rule:
    """An output folder: absent (made later) or a folder, and writable."""

    def rule(value: str) -> str | None:
        path = Path(value)
        if path.exists() and not path.is_dir():
            return "is a file; --out takes a folder (give a new folder's name)"
        return _writable_below(path)

    return rule


def new_file(suffixes: tuple[str, ...]) -> Rule:
    """An output file: not a folder, with one of `suffixes`, in a place that can be written."""

    def rule(value: str) -> str | None:
        path = Path(value)
        if path.is_dir():
            return f"is a folder; give a file name in it, e.g. {path / ('out' + suffixes[0])}"
        if path.suffix.lower() not in suffixes:
            return f"must end in {' or '.join(suffixes)}"
        return _writable_below(path)

    return rule


def device_present() -> Rule:
    """A torch device this machine has (cuda only with a CUDA GPU, mps only on Apple silicon)."""

    def rule(value: str) -> str | None:
        import torch

        try:
            device = torch.device(value)
        except (RuntimeError, ValueError):
            return "is not a device; use cpu, cuda, cuda:1 or mps"
        if device.type == "cuda":
            if not torch.cuda.is_available():
                return "no CUDA GPU is available here; use --device cpu"
            if device.index is not None and device.index >= torch.cuda.device_count():
                return f"this machine has {torch.cuda.device_count()} CUDA device(s)"
        if device.type == "mps" and not torch.backends.mps.is_available():
            return "MPS is not available here; use --device cpu"
        return None

    return rule


def json_object(text: str) -> dict:
    """argparse `type` for a JSON object flag (e.g. --model-kwargs '{"depth": 4}')."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({e.msg}); write e.g. '{{\"depth\": 4}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} must be a JSON object of names and values, "
                                         "e.g. '{\"depth\": 4}'")
    return value
