"""`vislora extract --base B --tuned T --rank r -o OUT`: a LoRA from the difference of two checkpoints.

For every 2-D (Linear) and 4-D (Conv2d) weight present in both safetensors files with the same shape, the
difference T - B is factored by SVD: LoRA for Linear, LoCon for convolutions (down with the layer's kernel,
1 x 1 up). Differences below --min-diff (max abs) are skipped. Module paths are the checkpoint's key minus
".weight". Files are read by vislora's own safetensors reader (never unpickled).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from ..errors import AdapterCompatError
from ..formats import AdapterFile, container
from . import common
from .lowrank import approximate
from ..helpformat import HelpFormatter


@dataclass
class ExtractReport:
    errors: dict[str, float] = field(default_factory=dict)
    skipped: int = 0

    @property
    def max_rel_error(self) -> float:
        return max(self.errors.values(), default=0.0)


def extract(base: str, tuned: str, rank: int | None = None, energy: float | None = None,
            min_diff: float = 0.0) -> tuple[AdapterFile, ExtractReport]:
    (b, _), (t, _) = container.read(base), container.read(tuned)
    keys = [k for k in sorted(b) if k.endswith(".weight") and k in t and b[k].dim() in (2, 4)
            and b[k].shape == t[k].shape and b[k].is_floating_point()]
    if not keys:
        raise AdapterCompatError("the two checkpoints share no Linear/Conv2d weights of the same shape", path=tuned,
                                 category="no-match")
    report, modules = ExtractReport(), {}
    for key in common.progress(keys, "extract", len(keys)):
        diff = t[key].double() - b[key].double()
        if diff.abs().max() <= min_diff:
            report.skipped += 1
            continue
        approx = approximate(diff, rank, energy)
        path = key[: -len(".weight")]
        modules[path] = approx.weights
        report.errors[path] = approx.rel_error
    meta = {"vislora.extracted_from": f"{tuned} - {base}"}
    return AdapterFile(tuned, "vislora", modules, {}, None, meta), report


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vislora extract", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--base", required=True, help="the original checkpoint (.safetensors)")
    p.add_argument("--tuned", required=True, help="the fine-tuned checkpoint (.safetensors)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--rank", type=int)
    group.add_argument("--energy", type=float)
    p.add_argument("--min-diff", type=float, default=0.0, help="skip weights whose largest change is below this")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--to", default="vislora", choices=sorted(common.TARGETS))
    args = p.parse_args(argv)
    adapter, report = extract(args.base, args.tuned, args.rank, args.energy, args.min_diff)
    out = common.write(args.output, adapter, args.to)
    print(f"wrote {out}: {len(report.errors)} modules ({report.skipped} unchanged skipped); relative error max "
          f"{report.max_rel_error:.3g}")
    return 0
