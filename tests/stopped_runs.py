"""A finished diffusion run's folder as it would be had the run stopped before its last checkpoint: what a
--resume test starts from."""

from __future__ import annotations

import shutil
from pathlib import Path

# What a diffusion run writes only at its end.
END_FILES = ("adapter.safetensors", "metrics.json", "metrics.csv", "loss.png")


def stopped_before(run: Path, out: Path, last_step: int) -> Path:
    """Copy `run` to `out`, less its end files and the checkpoint of `last_step`; returns `out`."""
    shutil.copytree(run, out)
    for name in END_FILES:
        (out / name).unlink()
    shutil.rmtree(out / "checkpoints" / f"ckpt-{last_step:09d}")
    return out
