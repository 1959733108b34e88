"""What every reader checks beyond the container: bounded JSON, and a parsed adapter's numbers against its tensors.

    load_json(text, what, path)      JSON with a size and a nesting limit (deep `[[[...` never reaches the parser's
                                     recursion, so it is a typed error, not RecursionError)
    check_adapter(adapter)           every module: alpha finite and > 0 with a bounded scale, rank >= 1, and the
                                     factors' rank axes agreeing with each other (down [8, 32] with up [32, 7]
                                     is refused here, before any tool multiplies them)

Called from `formats.read` for every format, so inspect, convert, merge, resize, load_adapter, generate and
the studio all refuse the same files with the same typed errors.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from ..errors import AdapterFormatError, FactorShapeError
from .adapter import AdapterFile, ModuleWeights

MAX_JSON_DEPTH = 32  # vislora's own tables nest 4 deep, PEFT configs 3
MAX_JSON_BYTES = 16 * 1024 * 1024  # the container's header limit; a config file is far smaller
# A scale (alpha / rank) beyond this overflows fp16 activations at once and exists in no trained adapter;
# 1e30 would turn every image black rather than fail.
MAX_SCALE = 1e4

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def json_depth(raw: bytes) -> int:
    """How deep `[` and `{` nest in `raw` (brackets inside strings ignored), without a recursive parse."""
    skeleton = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not skeleton:
        return 0
    codes = np.frombuffer(skeleton, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps, dtype=np.int64).max())


def check_json_limits(raw: bytes, what: str, path: object, category: str,
                      max_depth: int = MAX_JSON_DEPTH, max_bytes: int = MAX_JSON_BYTES) -> None:
    if len(raw) > max_bytes:
        raise AdapterFormatError(f"{what} is {len(raw):,} bytes (limit {max_bytes:,})", path=path, category=category)
    depth = json_depth(raw)
    if depth > max_depth:
        raise AdapterFormatError(f"{what} nests {depth} levels deep (limit {max_depth}); no adapter file does that",
                                 path=path, category=category)


def load_json(text: str | bytes, what: str, path: object, category: str = "bad-metadata",
              max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads under the size and depth limits; anything wrong is an AdapterFormatError naming `what`."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    check_json_limits(raw, what, path, category, max_depth)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise AdapterFormatError(f"{what} is not valid JSON: {e}", path=path, category=category) from None


def json_object(text: str | bytes, what: str, path: object) -> dict[str, Any]:
    value = load_json(text, what, path)
    if not isinstance(value, dict):
        raise AdapterFormatError(f"{what} must be a JSON object, got {type(value).__name__}", path=path,
                                 category="bad-metadata")
    return value


def finite_alpha(value: Any, where: str, path: object) -> float:
    """A stored alpha as a float, refused unless it is a finite number > 0 (0 disables the module in other
    tools, NaN/inf poison every output)."""
    try:
        alpha = float(value)
    except (TypeError, ValueError, OverflowError):
        raise AdapterFormatError(f"{where}: alpha {value!r} is not a number", path=path, category="bad-alpha") from None
    if isinstance(value, bool) or not math.isfinite(alpha) or alpha <= 0:
        raise AdapterFormatError(f"{where}: alpha {value!r} must be a finite number > 0; fix the file's metadata or "
                                 "re-export it", path=path, category="bad-alpha")
    return alpha


def matrix_factors(module: str, factors: dict, names: tuple[str, ...], path: object) -> None:
    """Refuse factors among `names` that are not matrices or conv kernels (2-D or 4-D), before a reader takes
    a rank from their first axis."""
    for name in names:
        t = factors.get(name)
        if t is not None and t.dim() not in (2, 4):
            raise FactorShapeError(f"module {module!r}: factor {name} has shape {list(t.shape)}; it must be a matrix "
                                   "or a conv kernel", path=path, category="shape-mismatch")


# Factor axes that hold the rank, per kind: (factor, axis) pairs whose sizes must agree (LoHa/LoKr per side;
# their Tucker variants orient the sides differently and are checked against the base weight by the kind).
RANK_AXES: dict[str, tuple[tuple[tuple[str, int], ...], ...]] = {
    "lora": ((("down", 0), ("up", 1)),),
    "locon": ((("down", 0), ("up", 1)),),
    "tucker": ((("down", 0), ("mid", 1)), (("mid", 0), ("up", 1))),
    "loha": ((("w1_a", 1), ("w1_b", 0)), (("w2_a", 1), ("w2_b", 0))),
    "lokr": ((("w1_a", 1), ("w1_b", 0)), (("w2_a", 1), ("w2_b", 0))),
}


def _check_module(name: str, w: ModuleWeights, path: object) -> None:
    if isinstance(w.rank, bool) or not isinstance(w.rank, int) or w.rank < 1:
        raise AdapterFormatError(f"module {name!r}: rank {w.rank!r} must be a whole number >= 1", path=path,
                                 category="bad-rank")
    finite_alpha(w.alpha, f"module {name!r}", path)
    scale = w.scale
    if not math.isfinite(scale) or abs(scale) > MAX_SCALE:
        raise AdapterFormatError(f"module {name!r}: alpha {w.alpha:g} at rank {w.rank} gives scale {scale:g} "
                                 f"(limit {MAX_SCALE:g}); such an adapter overflows", path=path, category="bad-alpha")
    for t_name, t in w.factors.items():
        if t.dim() == 0 or 0 in t.shape:
            raise FactorShapeError(f"module {name!r}: factor {t_name} has shape {list(t.shape)}; factors are "
                                   "non-empty matrices", path=path, category="shape-mismatch")
    tucker_sides = w.kind in ("loha", "lokr") and ("t1" in w.factors or "t2" in w.factors)
    for group in () if tucker_sides else RANK_AXES.get(w.kind, ()):
        present = [(f, axis) for f, axis in group if f in w.factors]
        flat = [f for f, axis in present if w.factors[f].dim() <= axis]
        if flat:
            raise FactorShapeError(f"module {name!r}: factor {flat[0]} has shape {list(w.factors[flat[0]].shape)}; a "
                                   f"{w.kind} factor is a matrix or a conv kernel", path=path, category="shape-mismatch")
        # a q/v-sliced LoRA's down holds one rank block per slice; its up, one slice's rank
        per_slice = len(w.slices) if w.slices else 1
        sizes = {w.factors[f].shape[axis] * (per_slice if f == "up" else 1) for f, axis in present}
        if len(sizes) > 1:
            shapes = ", ".join(f"{f} {list(w.factors[f].shape)}" for f, _ in present)
            raise FactorShapeError(f"module {name!r}: its factors disagree on the rank ({shapes}); the file is "
                                   "corrupt or was written wrongly", path=path, category="shape-mismatch")


def check_adapter(adapter: AdapterFile) -> AdapterFile:
    """Refuse a parsed file whose alphas, ranks or factor shapes cannot be right (see the module docstring)."""
    for name, w in adapter.modules.items():
        _check_module(name, w, adapter.source_of(name))
    return adapter
