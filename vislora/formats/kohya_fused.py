"""kohya names of diffusion transformers in their original (BFL / Stability) layout, where one fused layer
(Flux `img_attn_qkv`, `single_blocks_N_linear1` = q, k, v and the MLP input; SD3 `attn_qkv`) is several
diffusers layers. A family's map (`kohya_flux`, `kohya_sd3`) is a table; this module does the exact maths.

Reading splits a fused LoRA by output rows. The delta of part j is `scale * up[rows_j] @ down`; where the
up rows of different parts use disjoint sets of rank columns (a file written from split adapters: up
block-diagonal), part j keeps only its columns (`down[C_j]`, `up[rows_j, C_j]`, alpha scaled by |C_j| / R so
the scale is unchanged), else every part shares the whole down (rank R, same alpha). Both give each part's
delta exactly; a part whose rows are all zero is left out (its delta is zero).
Writing fuses split LoRAs exactly: downs stacked, ups block-diagonal, ranks summed, alpha = scale * R (parts
with another scale get it folded into their up). So split -> fused -> split is bit-exact when the parts share
a scale (as one training run's do). Unfused layers map 1:1 and keep any kind. adaLN layers whose (shift,
scale) halves diffusers stores swapped are swapped row-wise on the way in and out (LoRA and full kinds).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import AdapterFormatError
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


def _swap(t: torch.Tensor) -> torch.Tensor:
    if t.is_meta:  # a header-only read: the shape is all there is (and cat on meta would load torch's compiler)
        return t
    half = t.shape[0] // 2
    return torch.cat([t[half:], t[:half]])


def _swapped(name: str, w: ModuleWeights, layer: Layer) -> ModuleWeights:
    """`w` with its (shift, scale) output halves exchanged where `layer` needs it."""
    key = "up" if w.kind == "lora" else "diff"
    if not layer.swap or key not in w.factors:
        if layer.swap and w.kind != "lora":
            raise ValueError(f"{name}: a {w.kind} adapter on an adaLN layer cannot be reordered exactly (LoRA and "
                             "full weights only)")
        return w
    t = w.factors[key]
    width = w.factors["down"].shape[1] if key == "up" else t.shape[1]
    if t.shape[0] != 2 * width or w.magnitude is not None:
        if w.magnitude is not None:
            raise ValueError(f"{name}: a DoRA adapter on an adaLN layer cannot be reordered exactly")
        return w
    return ModuleWeights(w.kind, dict(w.factors, **{key: _swap(t)}), w.rank, w.alpha, w.rslora)


def _split(name: str, w: ModuleWeights, layer: Layer, path: str) -> list[ModuleWeights | None]:
    if len(layer.parts) == 1:
        try:
            return [_swapped(name, w, layer)]
        except ValueError as e:
            raise AdapterFormatError(str(e), path=path, category="unsupported-kind") from None
    if w.kind != "lora" or w.magnitude is not None:
        raise AdapterFormatError(f"module {name!r} is fused ({', '.join(layer.parts)}); a {w.kind} adapter on it "
                                 "cannot be split exactly (LoRA only)", path=path, category="unsupported-kind")
    down, up = w.factors["down"], w.factors["up"]
    width = down.shape[1]
    sizes = [m * width for m in layer.rows]
    if sum(sizes) != up.shape[0]:
        raise AdapterFormatError(f"module {name!r}: {up.shape[0]} output rows, but its parts need "
                                 f"{' + '.join(map(str, sizes))}", path=path, category="shape-mismatch")
    blocks = torch.split(up, sizes)
    if up.is_meta:  # a header-only read: which columns each part uses is known only from the values
        return [ModuleWeights("lora", {"down": down, "up": b}, w.rank, w.alpha, w.rslora) for b in blocks]
    used = [(b != 0).any(0).nonzero().flatten() for b in blocks]
    columns = torch.cat(used)
    if len(columns) == len(set(columns.tolist())):  # disjoint: each part keeps its own columns
        return [None if len(c) == 0 else ModuleWeights(
            "lora", {"down": down[_columns(c)], "up": b[:, _columns(c)]}, len(c), w.alpha * len(c) / w.rank, w.rslora)
            for b, c in zip(blocks, used)]
    return [ModuleWeights("lora", {"down": down, "up": b.contiguous()}, w.rank, w.alpha, w.rslora) for b in blocks]


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
    if len(layer.parts) == 1:
        return _swapped(name, next(iter(present.values())), layer)
    if any(w.kind != "lora" or w.slices or w.magnitude is not None for w in present.values()):
        raise ValueError(f"{name} fuses {', '.join(layer.parts)}: only plain LoRA parts fuse exactly; write "
                         "--to lycoris (one module per diffusers layer, any kind)")
    first = next(iter(present.values()))
    width = first.factors["down"].shape[1]
    rank = sum(w.rank for w in present.values())
    alpha = first.alpha * rank / first.rank  # scale * R, multiplied first so integer alphas stay exact
    downs, ups = [], []
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
    return ModuleWeights("lora", {"down": torch.cat(downs), "up": up}, rank, alpha, first.rslora)


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
