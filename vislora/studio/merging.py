"""The current mix as one adapter file, through `vislora merge`'s exact merge (vislora.tools.merge): factors
concatenated along the rank, each switched-on adapter's strength and scale folded into its up factor, so

    delta_merged = sum_i strength_i * scale_i * up_i @ down_i      (rank sum_i r_i, no approximation)

The merge takes one strength per file; a mix with per-section factors or an lbw string is refused (with the
reason, shown on the page) rather than written as a file that draws something else.
"""

from __future__ import annotations

from pathlib import Path

from ..tools import common
from ..tools.merge import merge
from .mix import Mix, StudioInputError


def write_merged(paths: dict[str, Path], mixes: dict[str, Mix], out: Path) -> Path:
    """Write `mixes` (adapter key -> its switched-on Mix; files at `paths`) as one vislora-format file `out`."""
    for key, mix in mixes.items():
        if not mix.simple:
            raise StudioInputError(f"{key}: a merged file holds one strength per adapter; per-section factors "
                                   "and lbw cannot be written into it exactly (set them to 1 and clear lbw, "
                                   "or use the PNG's settings instead)")
    merged, _ = merge([(common.read(str(paths[k]), None, False), m.strength) for k, m in mixes.items()])
    return Path(common.write(str(out), merged, "vislora"))
