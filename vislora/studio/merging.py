"""The current mix as one adapter file, through `vislora merge`'s exact merge (vislora.tools.merge) when this
build has it: factors concatenated along the rank, each file's strength and scale folded into its up factor."""

from __future__ import annotations

from pathlib import Path

from .mix import Mix, StudioInputError


def write_merged(paths: dict[str, Path], mixes: dict[str, Mix], out: Path) -> Path:
    try:
        from ..tools import common
        from ..tools.merge import merge
    except ImportError:
        raise StudioInputError("this build of vislora has no exact adapter merge (vislora merge)") from None
    for key, mix in mixes.items():
        if not mix.simple:
            raise StudioInputError(f"{key}: a merged file holds one strength per adapter; per-section factors "
                                   "and lbw cannot be written into it")
    merged, _ = merge([(common.read(str(paths[k]), None, False), m.strength) for k, m in mixes.items()])
    return Path(common.write(str(out), merged, "vislora"))
