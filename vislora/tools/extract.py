"""`vislora extract --base B --tuned T --rank r -o OUT`: a LoRA from the difference of two checkpoints.

For every 2-D (Linear) and 4-D (Conv2d) weight present in both safetensors files, the difference T - B is
factored by SVD: LoRA for Linear, LoCon for convolutions (down with the layer's kernel, 1 x 1 up). A weight
whose shape differs between the files (another architecture) or that holds NaN/inf is refused, by name.
Differences below --min-diff (max abs) are skipped. Module paths are the checkpoint's key minus ".weight".
Files are read by vislora's container reader (header checked first, memory-mapped, never unpickled).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import formats
from ..checks import Parser, check
from ..errors import AdapterCompatError, AdapterFormatError
from ..formats import AdapterFile, container
from ..helpformat import HelpFormatter
from . import common
from .lowrank import approximate


@dataclass
class ExtractReport:
    errors: dict[str, float] = field(default_factory=dict)
    skipped: int = 0

    @property
    def max_rel_error(self) -> float:
        return max(self.errors.values(), default=0.0)


def extract(base: str, tuned: str, rank: int | None = None, energy: float | None = None,
            min_diff: float = 0.0) -> tuple[AdapterFile, ExtractReport]:
    common.check_target(rank, energy)
    (b, _), (t, _) = container.read(base), container.read(tuned)
    keys = [k for k in sorted(b) if k.endswith(".weight") and k in t and b[k].dim() in (2, 4)
            and b[k].is_floating_point()]
    mismatched = [k for k in keys if b[k].shape != t[k].shape]
    if mismatched:
        k = mismatched[0]
        raise AdapterCompatError(f"{len(mismatched)} weights differ in shape between the checkpoints, e.g. {k!r}: "
                                 f"{list(b[k].shape)} in {base}, {list(t[k].shape)} here; they are not the same "
                                 "architecture", path=tuned, category="shape-mismatch")
    if not keys:
        raise AdapterCompatError("the two checkpoints share no Linear/Conv2d weights of the same shape", path=tuned,
                                 category="no-match")
    report, modules = ExtractReport(), {}
    for key in common.progress(keys, "extract", len(keys)):
        for file, tensors in ((base, b), (tuned, t)):
            if not torch.isfinite(tensors[key]).all():
                raise AdapterFormatError(f"{key!r} contains NaN or inf; a difference with it is meaningless",
                                         path=file, category="non-finite")
        diff = t[key].double() - b[key].double()
        if diff.abs().max() <= min_diff:
            report.skipped += 1
            continue
        approx = approximate(diff, rank, energy)
        path = key[: -len(".weight")]
        modules[path] = approx.weights
        report.errors[path] = approx.rel_error
    meta = {"vislora.extracted_from": f"{tuned} - {base}"}
    return AdapterFile(tuned, formats.DEFAULT, modules, {}, None, meta), report


def main(argv: list[str]) -> int:
    p = Parser(prog="vislora extract", description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("--base", required=True, help="the original checkpoint (.safetensors)")
    p.add_argument("--tuned", required=True, help="the fine-tuned checkpoint (.safetensors)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--rank", type=int)
    group.add_argument("--energy", type=float, help="share of sum s_i^2 to keep per module, e.g. 0.9")
    p.add_argument("--min-diff", type=float, default=0.0, help="skip weights whose largest change is below this")
    p.add_argument("-o", "--output", required=True)
    common.add_target_option(p)
    args = p.parse_args(argv)
    check(args, common.TARGET_RULES)
    common.check_output(args.output, args.to)
    adapter, report = extract(args.base, args.tuned, args.rank, args.energy, args.min_diff)
    out = common.write(args.output, adapter, args.to)
    print(f"wrote {out}: {len(report.errors)} modules ({report.skipped} unchanged skipped); relative error max "
          f"{report.max_rel_error:.3g}")
    return 0
