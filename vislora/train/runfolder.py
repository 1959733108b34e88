"""A run folder's identity: the settings a run started with, recorded in OUT/run.json, so that a second run
never mixes its files with a first one's (nor prunes, resumes from or replaces them).

    ident = identity(args, NOT_TRAJECTORY, task="classify")
    check_folder(out, ident, resume=args.resume, overwrite=args.overwrite)   # first: before anything loads
    claim(out, ident, overwrite=args.overwrite)    # main process, before the run writes its first file

A folder holds a run when it has run.json, checkpoints, a trained file or metrics. Such a folder is refused
unless --resume with the same settings (run.json's settings hash must match; a folder from before run.json
is left to the checkpoints' own settings hash) or --overwrite, which deletes the previous run's files only
when the new run has loaded its model and data, so a run that fails to start leaves them in place.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..basics import write_bytes
from ..checks import UsageError, flag_name
from ..version import __version__
from .runs import config_hash

RUN_FILE = "run.json"
FORMAT = "vislora-run"
# What a run writes into OUT (class_images is a cache of drawn pictures, kept; run.json is deleted last).
OUTPUTS = ("checkpoints", "adapter.safetensors", "model.safetensors", "metrics.json", "metrics.csv",
           "metrics.png", "loss.png", "samples", RUN_FILE)


@dataclass(frozen=True)
class Identity:
    """What a run is: its task, the settings that change what it trains, and their hash."""

    task: str
    settings: dict[str, Any]
    settings_hash: str


def identity(args: argparse.Namespace, ignore: set[str], task: str) -> Identity:
    """The run's settings (every flag but `ignore`) as JSON values, and runs.config_hash of them."""
    settings = json.loads(json.dumps({k: v for k, v in sorted(vars(args).items()) if k not in ignore},
                                     default=str))
    return Identity(task, settings, config_hash(args, ignore))


def held_files(out: Path) -> list[str]:
    """The names of a run's files in `out` (an empty checkpoints folder does not count)."""
    if not out.is_dir():
        return []
    held = [name for name in OUTPUTS if (out / name).exists()]
    if "checkpoints" in held and not any((out / "checkpoints").iterdir()):
        held.remove("checkpoints")
    return held


def recorded(out: Path) -> Identity | None:
    """The identity in out/run.json; None where there is none; UsageError where it cannot be read."""
    path = out / RUN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Identity(str(data["task"]), dict(data["settings"]), str(data["settings_hash"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"--out {out}: its {RUN_FILE} is unreadable ({e}); start over with --overwrite, "
                         "or choose another --out") from None


def _differences(there: Identity, here: Identity, most: int = 4) -> str:
    if there.task != here.task:
        return f"it is a {there.task} run"
    names = sorted(set(there.settings) | set(here.settings))
    changed = [f"{flag_name(n)} {here.settings.get(n)} here, {there.settings.get(n)} there"
               for n in names if there.settings.get(n) != here.settings.get(n)]
    more = f", and {len(changed) - most} more" if len(changed) > most else ""
    return "; ".join(changed[:most]) + more if changed else "the same flags, other data or base"


def check_folder(out: str | Path, ident: Identity, *, resume: bool, overwrite: bool) -> None:
    """Refuse (UsageError, one line) a run into a folder that holds another run's files, unless --resume with
    the same settings, or --overwrite. Reads only: nothing is written or deleted here."""
    out = Path(out)
    if resume and overwrite:
        raise UsageError("--resume with --overwrite: choose one (continue the run in --out, or start it over)")
    held = held_files(out)
    if not held or overwrite:
        return
    there = recorded(out)
    if resume:
        if there is not None and there.settings_hash != ident.settings_hash:
            raise UsageError(f"--out {out}: holds a run made with other settings ({_differences(there, ident)}); "
                             "resume with the same flags, start over with --overwrite, or choose another --out")
        return
    what = "a run with these settings" if there and there.settings_hash == ident.settings_hash else (
        f"another run's files ({_differences(there, ident)})" if there else f"another run's files ({', '.join(held)})")
    raise UsageError(f"--out {out}: holds {what}; add --resume to continue it, --overwrite to replace it, "
                     "or choose another --out")


def claim(out: str | Path, ident: Identity, *, overwrite: bool) -> Path:
    """Make `out` this run's: with overwrite, delete the previous run's files (run.json last); then record
    the identity in run.json, atomically (kept as it is when it already records this run: a resume)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for name in OUTPUTS:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    there = recorded(out)
    if there is None or there.settings_hash != ident.settings_hash:
        record = {"format": FORMAT, "version": __version__, "task": ident.task, "settings_hash": ident.settings_hash,
                  "seed": ident.settings.get("seed"), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "settings": ident.settings}
        write_bytes(out / RUN_FILE, json.dumps(record, indent=1, sort_keys=True).encode("utf-8"))
    return out / RUN_FILE
