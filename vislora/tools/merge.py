"""`vislora merge A.safetensors:0.6 B.safetensors:0.4 -o C`: one adapter with the blend of several.

Exact (default): LoRA/LoCon factors concatenated along the rank, each file's weight and scale folded into
its up factor, so delta_C = sum_i w_i * scale_i * up_i @ down_i with no approximation (rank = sum of ranks,
alpha = rank). With --rank r: the blended delta W of every module (any kind) is factored by SVD to rank r,
and the relative Frobenius error of each module is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import Parser, UsageError, check
from ..errors import AdapterCompatError
from .. import formats
from ..formats import AdapterFile, ModuleWeights
from ..helpformat import HelpFormatter
from ..strengths import check_strength
from . import common
from .lowrank import approximate, approximate_product


@dataclass
class MergeReport:
    modules: int
    max_rel_error: float = 0.0
    mean_rel_error: float = 0.0


def _concat(parts: list[tuple[ModuleWeights, float]]) -> ModuleWeights:
    """[down_1; down_2; ...] and [w_1 s_1 up_1, w_2 s_2 up_2, ...]: rank sum_i r_i, scale 1."""
    downs, ups = [], []
    for w, weight in parts:
        if not common.exact(w):
            raise AdapterCompatError(f"an exact merge concatenates LoRA/LoCon factors; a {w.kind}"
                                     f"{' (DoRA)' if getattr(w, 'magnitude', None) is not None else ''} module "
                                     "cannot be; use --rank r to merge by SVD", category="unsupported-kind")
        factors, rank = w.plain() if w.slices else (dict(w.factors), w.rank)
        downs.append(factors["down"].float())
        ups.append(factors["up"].float() * (weight * w.scale))
    kinds = {w.kind for w, _ in parts}
    if len(kinds) > 1 or len({tuple(d.shape[1:]) for d in downs}) > 1:
        raise AdapterCompatError(f"modules of different shapes or kinds ({sorted(kinds)}) cannot be concatenated",
                                 category="shape-mismatch")
    down, up = torch.cat(downs, 0), torch.cat(ups, 1)
    return ModuleWeights(kinds.pop(), {"down": down, "up": up}, down.shape[0], float(down.shape[0]))


def merge(inputs: list[tuple[AdapterFile, float]], rank: int | None = None) -> tuple[AdapterFile, MergeReport]:
    """The blended adapter and, for SVD merges, its approximation error."""
    for adapter, weight in inputs:
        check_strength(weight, f"merge weight of {adapter.path}")
    if rank is not None:
        common.check_target(rank, None)
    paths = sorted({p for a, _ in inputs for p in a.modules})
    modules, errors = {}, []
    for path in common.progress(paths, "merge", len(paths)):
        parts = [(a.modules[path], weight) for a, weight in inputs if path in a.modules]
        if rank is None:
            modules[path] = _concat(parts)
            continue
        products = [common.product(w) for w, _ in parts]
        if all(products) and len({p[2] for p in products}) == 1:  # concatenated factors: no dense delta
            up = torch.cat([p[0] * weight for p, (_, weight) in zip(products, parts)], 1)
            approx = approximate_product(up, torch.cat([p[1] for p in products]), products[0][2], rank)
        else:
            approx = approximate(sum(common.delta(w) * weight for w, weight in parts), rank)
        modules[path] = approx.weights
        errors.append(approx.rel_error)
    report = MergeReport(len(modules), max(errors, default=0.0), sum(errors) / len(errors) if errors else 0.0)
    merged = AdapterFile("", formats.DEFAULT, modules, {}, None, {"vislora.merged_from": ", ".join(
        f"{a.path}:{w:g}" for a, w in inputs)})
    return merged, report


def parse_input(spec: str) -> tuple[str, float]:
    """"file.safetensors:0.6" -> (file, 0.6); no weight means 1. A weight must be a finite strength
    (|w| <= strengths.MAX_STRENGTH): "FILE:nan" or "FILE:1e39" would write NaN/inf factors."""
    path, sep, weight = spec.rpartition(":")
    if sep and path:
        try:
            value = float(weight)
        except ValueError:
            return spec, 1.0
        return path, check_strength(value, f"{spec!r}: the weight after ':'")
    return spec, 1.0


def main(argv: list[str]) -> int:
    p = Parser(prog="vislora merge", description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="+", help="FILE[:WEIGHT] ...")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--rank", type=int, help="factor the blend by SVD to this rank (default: exact concatenation)")
    common.add_target_option(p)
    p.add_argument("--base", choices=sorted(common.BASES))
    p.add_argument("--allow-partial", action="store_true")
    args = p.parse_args(argv)
    check(args, {"rank": common.TARGET_RULES["rank"]})
    common.check_output(args.output, args.to)
    try:
        specs = [parse_input(spec) for spec in args.inputs]
    except ValueError as e:
        raise UsageError(str(e)) from None
    inputs = [(common.read(path, args.base, args.allow_partial), w) for path, w in specs]
    merged, report = merge(inputs, args.rank)
    out = common.write(args.output, merged, args.to)
    text = f"wrote {out}: {report.modules} modules"
    if args.rank:
        text += f"; SVD relative error max {report.max_rel_error:.3g}, mean {report.mean_rel_error:.3g}"
    print(text)
    return 0
