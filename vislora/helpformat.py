"""How every vislora command's `--help` reads: each option with its default, the description as written.

    p = argparse.ArgumentParser(prog="vislora inspect", formatter_class=HelpFormatter)
"""

from __future__ import annotations

import argparse
import copy


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, also for options written without a help text, keeping the description's
    line breaks. A default that says nothing (None, "", a switch's off) or one the help already states is not
    repeated."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        says_nothing = default is None or default is argparse.SUPPRESS or default in ("", [])
        if (says_nothing or action.nargs == 0  # a switch (store_true/false): its default is the switch's absence
                or "default" in text or not (action.option_strings or action.nargs in ("?", "*"))):
            return text
        return f"{text} (default: %(default)s)".strip()

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help:  # argparse prints no help column for an option written without help text
            text = self._get_help_string(action)
            if text:
                action = copy.copy(action)
                action.help = text
        return super()._format_action(action)
