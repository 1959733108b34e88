"""The current mix as one adapter file, through the exact merge of `vislora.formats` when this build has it."""

from __future__ import annotations

from pathlib import Path

from .mix import Mix, StudioInputError


def write_merged(paths: dict[str, Path], mixes: dict[str, Mix], out: Path) -> Path:
    try:
        from ..formats.merge import merge_files  # the formats work's exact merge
    except ImportError:
        raise StudioInputError("this build of vislora has no exact adapter merge (vislora.formats.merge)") from None
    for key, mix in mixes.items():
        if not mix.simple:
            raise StudioInputError(f"{key}: a merged file holds one strength per adapter; per-section factors "
                                   "and lbw cannot be written into it")
    return merge_files([(paths[k], m.strength) for k, m in mixes.items()], out)
