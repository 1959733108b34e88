"""`vislora resize IN --rank r | --energy 0.9 -o OUT`: the same adapter at a lower rank, by SVD.

Each module's delta W (any kind) is factored again: to rank r, or to the smallest rank that keeps the given
share of sum s_i^2 (the squared Frobenius norm). The relative error of each module is exactly
sqrt(discarded s_i^2 / all s_i^2) (Eckart-Young); the report gives its maximum and mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import formats
from ..checks import Parser, check
from ..formats import AdapterFile
from ..helpformat import HelpFormatter
from . import common
from .lowrank import approximate, approximate_product


@dataclass
class ResizeReport:
    errors: dict[str, float] = field(default_factory=dict)  # module -> relative Frobenius error
    ranks: dict[str, tuple[int, int]] = field(default_factory=dict)  # module -> (old rank, new rank)

    @property
    def max_rel_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    @property
    def mean_rel_error(self) -> float:
        return sum(self.errors.values()) / len(self.errors) if self.errors else 0.0


def resize(adapter: AdapterFile, rank: int | None = None, energy: float | None = None) -> tuple[AdapterFile, ResizeReport]:
    common.check_target(rank, energy)
    report = ResizeReport()
    modules = {}
    for path, w in common.progress(adapter.modules.items(), "resize", len(adapter.modules)):
        dtype = next(iter(w.factors.values())).dtype
        factored = common.product(w)
        approx = (approximate_product(*factored, rank, energy, dtype) if factored else
                  approximate(common.delta(w), rank, energy, dtype))
        modules[path] = approx.weights
        report.errors[path] = approx.rel_error
        report.ranks[path] = (w.rank, approx.weights.rank)
    meta = dict(adapter.metadata, **{"vislora.resized": f"rank={rank}" if rank else f"energy={energy}"})
    return AdapterFile(adapter.path, formats.DEFAULT, modules, dict(adapter.extra), None, meta), report


def main(argv: list[str]) -> int:
    p = Parser(prog="vislora resize", description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("src")
    p.add_argument("-o", "--output", required=True)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--rank", type=int)
    group.add_argument("--energy", type=float, help="share of sum s_i^2 to keep per module, e.g. 0.9")
    common.add_target_option(p)
    p.add_argument("--base", choices=sorted(common.BASES))
    p.add_argument("--allow-partial", action="store_true")
    args = p.parse_args(argv)
    check(args, common.TARGET_RULES)
    common.check_output(args.output, args.to)
    adapter = common.read(args.src, args.base, args.allow_partial)
    resized, report = resize(adapter, args.rank, args.energy)
    out = common.write(args.output, resized, args.to)
    ranks = sorted({new for _, new in report.ranks.values()})
    print(f"wrote {out}: {len(report.errors)} modules, ranks {ranks[:8]}; relative error max "
          f"{report.max_rel_error:.3g}, mean {report.mean_rel_error:.3g}")
    return 0
