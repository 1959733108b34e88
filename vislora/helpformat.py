"""How every vislora command's `--help` reads: each option with its default, the description as written.

    p = argparse.ArgumentParser(prog="vislora inspect", formatter_class=HelpFormatter)
"""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, also for options written without a help text, keeping the description's
    line breaks. A default that says nothing (None, False) or one the help already states is not repeated."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS or default == []
                or "default" in text or not (action.option_strings or action.nargs in ("?", "*"))):
            return text
        return f"{text} (default: %(default)s)".strip()

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and self._get_help_string(action):
            action.help = " "  # argparse prints no help column for an option without help text
        return super()._format_action(action)

    def _expand_help(self, action: argparse.Action) -> str:
        return super()._expand_help(action).strip()
