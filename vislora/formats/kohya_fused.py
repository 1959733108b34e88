"""kohya names of diffusion transformers in their original (BFL / Stability) layout, where one fused layer
(Flux `img_attn_qkv`, `single_blocks_N_linear1` = q, k, v and the MLP input; SD3 `attn_qkv`) is several
diffusers layers. A family's map (`kohya_flux`, `kohya_sd3`) is a table; this module does the exact maths.

Reading splits a fused layer's adapter by output rows (row_blocks: any kind; LoHa and LoKr keep their kind
where their row factors allow, else each part gets the exact full-weight difference; DoRA magnitudes per output
row are cut with the rows). A LoRA part's delta is `scale * up[rows_j] @ down`; where the up rows of different
parts use disjoint sets of rank columns (a file written from split adapters: up block-diagonal), part j keeps
only its columns (`down[C_j]`, `up[rows_j, C_j]`, alpha scaled by |C_j| / R so the scale is unchanged), else
every part shares the whole down (rank R, same alpha). Both give each part's delta exactly; a LoRA part whose
rows are all zero is left out (its delta is zero; not with DoRA, whose magnitude still rescales the rows).
Writing fuses split LoRAs exactly: downs stacked, ups block-diagonal, ranks summed, alpha = scale * R (parts
with another scale get it folded into their up); parts that share one down (read from a LoRA trained fused)
stack back to it. So split -> fused -> split is bit-exact when the parts share a scale (as one training
run's do). Other kinds fuse only where one module has exactly the parts' effect
(row_blocks.stack: full weights, or parts that share every factor but their rows, as a split file's do); else
writing is refused. Unfused layers map 1:1 and keep any kind. adaLN layers whose (shift, scale) halves
diffusers stores swapped are swapped row-wise on the way in and out, any kind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import AdapterFormatError
from ..functional import KINDS
from . import row_blocks
from .adapter import ModuleWeights

TRANSFORMER_PREFIX = "lora_transformer"  # kohya-style name of a diffusers transformer path (OneTrainer's)


@dataclass(frozen=True)
class Layer:
    """One original layer: its diffusers parts (paths under the block) in row order; `rows` each part's
    output rows as a multiple of the layer's input width (None for one part); `swap`: the original stores
    (shift, scale) where diffusers stores (scale, shift), which is so where the layer has exactly two chunks
    (output rows = 2 x input width: a final layer, SD3's context-pre-only last block)."""

    parts: tuple[str, ...]
    rows: tuple[int, ...] | None = None
    swap: bool = False


@dataclass(frozen=True)
class Section:
    """kohya name prefix (`{i}` = block index) and diffusers path prefix of a group of layers."""

    kohya: str
    diffusers: str
    layers: dict[str, Layer]


def mangle(path: str) -> str:
    return f"{TRANSFORMER_PREFIX}_{path.replace('.', '_')}"


def _template(template: str) -> str:
    """A name template's regex: `{i}` (the block index) becomes a group, the rest is literal."""
    return r"(\d+)".join(re.escape(piece) for piece in template.split("{i}"))


def _regex(sections: tuple[Section, ...]) -> list[tuple[re.Pattern, Section]]:
    out = []
    for s in sections:
        names = "|".join(sorted(map(re.escape, s.layers), key=len, reverse=True))
        out.append((re.compile(f"^{_template(s.kohya)}({names})$"), s))
    return out


def _width(w: ModuleWeights) -> int:
    """The layer's input width, from the factors' shapes."""
    return KINDS[w.kind].in_features(w.factors)


def _swapped(w: ModuleWeights, layer: Layer) -> ModuleWeights:
    """`w` with its (shift, scale) output halves exchanged where `layer` needs it (row_blocks: any kind, as
    itself where its row factors allow, else as full weights)."""
    if not layer.swap or row_blocks.out_rows(w) != 2 * _width(w):
        return w
    half = [_width(w)] * 2
    return row_blocks.stack(row_blocks.cut(w, half)[::-1], half)


def _split(name: str, w: ModuleWeights, layer: Layer, path: str) -> list[ModuleWeights | None]:
    try:
        if len(layer.parts) == 1:
            return [_swapped(w, layer)]
        sizes = [m * _width(w) for m in layer.rows]
        rows = row_blocks.out_rows(w)
        if rows is not None and sum(sizes) != rows:
            raise row_blocks.Malformed(f"{rows} output rows, but its parts need {' + '.join(map(str, sizes))}")
        parts = row_blocks.cut(w, sizes)
    except row_blocks.Malformed as e:
        raise AdapterFormatError(f"module {name!r}: {e}", path=path, category="shape-mismatch") from None
    except ValueError as e:
        how = "is fused" if len(layer.parts) > 1 else "has its halves swapped in"
        raise AdapterFormatError(f"module {name!r} {how} ({', '.join(layer.parts)}); a {w.kind} adapter on it "
                                 f"cannot be cut by rows exactly: {e}", path=path, category="unsupported-kind") from None
    return _own_columns(parts) if w.kind == "lora" else parts


def _own_columns(parts: list[ModuleWeights]) -> list[ModuleWeights | None]:
    """LoRA parts cut from one fused LoRA (each the whole down, its rows of up), each with only the rank columns
    its up uses where no two parts use the same one (a file written from split adapters)."""
    up = [p.factors["up"] for p in parts]
    if up[0].is_meta:  # a header-only read: which columns each part uses is known only from the values
        return parts
    used = [(b != 0).any(0).nonzero().flatten() for b in up]
    columns = torch.cat(used)
    dora = parts[0].magnitude is not None  # a DoRA part with a zero delta still rescales its rows: kept
    if len(columns) != len(set(columns.tolist())) or (dora and any(len(c) == 0 for c in used)):
        return parts
    out: list[ModuleWeights | None] = []
    for p, c in zip(parts, used):
        if len(c) == 0:
            out.append(None)  # its delta is zero
            continue
        down = p.factors["down"][_columns(c)]
        q = ModuleWeights("lora", {"down": down, "up": p.factors["up"][:, _columns(c)]}, len(c),
                          p.alpha * len(c) / p.rank, p.rslora)
        q.magnitude = p.magnitude
        out.append(q)
    return out


def _columns(c: torch.Tensor) -> torch.Tensor | slice:
    """Index for columns `c` (sorted): a slice where they are a run (what our writer makes), so the part's
    factors are views of the file's memory map, not copies."""
    first, last = int(c[0]), int(c[-1])
    return slice(first, last + 1) if last - first + 1 == len(c) else c


def to_diffusers(modules: dict[str, ModuleWeights], sections: tuple[Section, ...], path: str
                 ) -> dict[str, ModuleWeights]:
    """The modules with every original-layout name replaced by its diffusers parts (as `lora_transformer_`
    names); other names stay."""
    out: dict[str, ModuleWeights] = {}
    rules = _regex(sections)
    for name, w in modules.items():
        for rx, section in rules:
            m = rx.match(name)
            if m:
                block = section.diffusers.format(i=m.group(1)) if m.lastindex == 2 else section.diffusers
                layer = section.layers[m.group(m.lastindex)]
                for part, pw in zip(layer.parts, _split(name, w, layer, path)):
                    if pw is not None:
                        out[mangle(block + part)] = pw
                break
        else:
            out[name] = w
    return out


def _fuse(name: str, layer: Layer, present: dict[int, ModuleWeights]) -> ModuleWeights:
    try:
        if len(layer.parts) == 1:
            return _swapped(next(iter(present.values())), layer)
        width = _width(next(iter(present.values())))
        parts, sizes = [present.get(j) for j in range(len(layer.parts))], [m * width for m in layer.rows]
        if all(w.kind == "lora" and not w.slices for w in present.values()):
            try:  # parts that share one down (read from a LoRA trained fused) stack back to it
                return row_blocks.stack(parts, sizes)
            except ValueError:
                return _fuse_lora(layer, present)
        return row_blocks.stack(parts, sizes)
    except ValueError as e:
        raise ValueError(f"{name} fuses {', '.join(layer.parts)}: no one module has exactly their effect "
                         f"({e}); write --to lycoris (one module per diffusers layer, any "
                         "kind)") from None


def _fuse_lora(layer: Layer, present: dict[int, ModuleWeights]) -> ModuleWeights:
    """Split LoRAs as one: downs stacked, ups block-diagonal, ranks summed, alpha = scale * R (parts with
    another scale get it folded into their up); DoRA magnitudes (per row, every part) stacked."""
    first = next(iter(present.values()))
    width = first.factors["down"].shape[1]
    rank = sum(w.rank for w in present.values())
    alpha = first.alpha * rank / first.rank  # scale * R, multiplied first so integer alphas stay exact
    downs = []
    column = 0
    up = first.factors["up"].new_zeros(sum(m * width for m in layer.rows), rank)
    row = 0
    for j, m in enumerate(layer.rows):
        w = present.get(j)
        if w is not None:
            factor = w.scale / first.scale
            part_up = w.factors["up"] if factor == 1.0 else w.factors["up"] * factor
            up[row:row + m * width, column:column + w.rank] = part_up
            downs.append(w.factors["down"])
            column += w.rank
        row += m * width
    out = ModuleWeights("lora", {"down": torch.cat(downs), "up": up}, rank, alpha, first.rslora)
    out.magnitude = row_blocks.stacked_magnitude([present.get(j) for j in range(len(layer.rows))])
    return out


def to_kohya(modules: dict[str, ModuleWeights], sections: tuple[Section, ...]) -> dict[str, ModuleWeights]:
    """Diffusers transformer paths (`transformer.` prefixed or bare) -> original-layout kohya names, fused
    where the original layer is; paths the map lacks keep a `lora_transformer_` name."""
    # each part as a diffusers path and as the lora_transformer_ name reading gives it
    compiled = [(re.compile(f"^(?:{_template(s.diffusers + part)}|{_template(mangle(s.diffusers + part))})$"),
                 (s.kohya + key, layer, j))
                for s in sections for key, layer in s.layers.items() for j, part in enumerate(layer.parts)]
    groups: dict[str, tuple[Layer, dict[int, ModuleWeights]]] = {}
    out: dict[str, ModuleWeights] = {}
    for full, w in modules.items():
        local = full[len("transformer."):] if full.startswith("transformer.") else full
        for rx, (kohya, layer, j) in compiled:
            m = rx.match(local)
            if m:
                index = next((g for g in m.groups() if g is not None), None)
                name = kohya.format(i=index) if index is not None else kohya
                groups.setdefault(name, (layer, {}))[1][j] = w
                break
        else:
            out[local if local.startswith(("lora_", "lycoris_")) else mangle(local)] = w  # kohya names stay
    for name, (layer, present) in groups.items():
        out[name] = _fuse(name, layer, present)
    return out
