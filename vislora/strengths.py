"""Strength specs: one adapter's blend factor per layer, from a number, a dict of block factors or an lbw string.

    0.7                                         every layer of the adapter at 0.7
    {"unet": 0.7, "text_encoder": 0.2}          per component
    {"*": 0.8, "unet.up": 0.0, "unet.down.1": 0.5, "mid": 2}     per block (diffusers sections, with indices)
    {"IN04": 0, "OUT03": 0.5}                   per LoRA Block Weight id
    "lbw:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"     an A1111 LoRA Block Weight list (17 / 26 values; SDXL 12 / 20)
    "lbw:MIDD"  or  {"*": 0.7, "lbw": "OUTD"}   a named lbw preset, times a global factor
    {"double.1": 0, "single": 0.5}              diffusion transformers: Flux double / single, SD3 joint blocks
    "lbw:1,<19 double>,<38 single>"             a Flux block vector (ComfyUI Inspire Pack's): BASE, then every
                                                double and single block by index (58 values on Flux.1-dev)

A layer's strength is the product of the global factor ("*", default 1) and every key that matches it, times
its lbw value. A key matches a layer when it is a dotted prefix of the layer's path ("unet", "unet.up_blocks.1",
"blocks.3" on a ViT); on pipelines the component may be left out ("up.1"); `down` / `mid` / `up` stand for
`down_blocks` / `mid_block` / `up_blocks`. A key that matches none of the adapter's layers is an error.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Union

import torch

from .components import ADAPTABLE, components
from .errors import AdapterStateError
from .layers import AdapterLayer
from .targets.blocks import LBW_IDS_26, LBW_LAYOUTS, LBW_MODEL, LBW_PRESETS, SECTION_ALIASES, ldm_block

Spec = Union[float, str, dict[str, Any]]
_TEXT_PREFIX = "text_encoder"


@dataclass(frozen=True)
class LayerPlace:
    """Where one adapter layer sits: full (component-prefixed) path, component, path in it, lbw id."""

    path: str
    component: str
    local: str
    block: str | None  # "BASE", "IN04", "M00", "OUT11", or None (not in a UNet block / not an SD model)
    # on a diffusion transformer's pipeline: (position in the block vector, its length); see `dit_position`
    dit: tuple[int, int] | None = None


_DIT_BLOCK = re.compile(r"^(single_)?transformer_blocks\.(\d+)(?:\.|$)")


def dit_position(local: str, blocks: tuple[int, int], in_transformer: bool) -> tuple[int, int]:
    """A layer's place in a transformer's block vector BASE, double (or joint) 0..D-1, single 0..S-1 (the layout
    of ComfyUI Inspire Pack's Flux vectors: 1 + 19 + 38 = 58 values on Flux.1-dev). BASE is every layer outside
    the blocks: text encoders, embedders, the final layer."""
    doubles, singles = blocks
    m = _DIT_BLOCK.match(local) if in_transformer else None
    if m is None:
        return 0, 1 + doubles + singles
    index = int(m[2])
    return (1 + doubles + index if m[1] else 1 + index), 1 + doubles + singles


def place(component: str, local: str, layers_per_block: int | None,
          dit_blocks: tuple[int, int] | None = None) -> LayerPlace:
    """The place of a layer; `layers_per_block` is the UNet's (None: the component is no UNet); `dit_blocks`
    the (double, single) block counts of the pipeline's diffusion transformer (None: there is none)."""
    full = f"{component}.{local}" if component else local
    if component.startswith(_TEXT_PREFIX):
        block = "BASE"
    else:
        block = None if layers_per_block is None else ldm_block(local, layers_per_block)
    dit = None
    if dit_blocks is not None:
        dit = dit_position(local, dit_blocks, not component.startswith(_TEXT_PREFIX))
    return LayerPlace(full, component, local, block, dit)


def adapter_places(model: Any, name: str) -> list[tuple[LayerPlace, AdapterLayer]]:
    """Every layer that carries adapter `name`, with its place (what strength specs address), in model order."""
    found = []
    parts = components(model)
    dit = dit_blocks(model)
    for comp, root in parts.items():
        lpb = _layers_per_block(root)
        for local, module in root.named_modules():
            if isinstance(module, AdapterLayer) and name in module.adapters:
                found.append((place(comp, local, lpb, dit), module))
    return found


def dit_blocks(model: Any) -> tuple[int, int] | None:
    """The (double or joint, single) block counts of the model's diffusion transformer, else None."""
    return next((b for b in map(_dit_blocks, components(model).values()) if b is not None), None)


def _dit_blocks(root: torch.nn.Module) -> tuple[int, int] | None:
    """A diffusion transformer's (double or joint, single) block counts, else None (a UNet has its
    transformer_blocks deeper down, never at its root)."""
    double = getattr(root, "transformer_blocks", None)
    if not isinstance(double, torch.nn.ModuleList):
        return None
    single = getattr(root, "single_transformer_blocks", None)
    return len(double), len(single) if isinstance(single, torch.nn.ModuleList) else 0


def _layers_per_block(root: torch.nn.Module) -> int | None:
    """A diffusers UNet's layers_per_block (the same for every block in SD1.x, SD2.x and SDXL), else None."""
    config = getattr(root, "config", None)
    if config is None or not hasattr(root, "down_blocks"):
        return None
    lpb = getattr(config, "layers_per_block", None)
    if isinstance(lpb, (list, tuple)):
        lpb = lpb[0]
    return int(lpb) if lpb is not None else None


# Strengths are blend factors around 1; beyond this one overflows fp16 outputs and draws black (1e30, 1e39).
MAX_STRENGTH = 100.0


def check_strength(value: Any, where: str) -> float:
    """`value` as a float, refused unless it is a finite number with |value| <= MAX_STRENGTH."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: a strength is a finite number, got {value!r}")
    if abs(value) > MAX_STRENGTH:
        raise ValueError(f"{where}: strength {value!r} is outside [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}]; adapters are "
                         "blended at strengths around 1")
    return float(value)


_number = check_strength


def parse_lbw(text: str, where: str) -> tuple[dict[str, float], int]:
    """An lbw value list or preset name -> ({lbw id: value} over all 26 ids, how many values were given)."""
    text = LBW_PRESETS.get(text.strip(), text)
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{where}: lbw takes comma-separated numbers or a preset ({', '.join(LBW_PRESETS)}); "
                         f"got {text!r}") from None
    layout = LBW_LAYOUTS.get(len(values))
    if layout is None:
        sizes = ", ".join(f"{n} ({m})" for n, m in LBW_MODEL.items())
        raise ValueError(f"{where}: an lbw list has {sizes} values; got {len(values)}")
    for v in values:
        _number(v, where)
    by_id = dict.fromkeys(LBW_IDS_26, 0.0)  # ids the list does not give get 0, as in the extension
    by_id.update(zip(layout, values))
    return by_id, len(values)


def _key_matches(key: str, p: LayerPlace) -> bool:
    """Whether a dict key names this layer (see the module docstring)."""
    if key in LBW_IDS_26 or key == "MID":
        return p.block == ("M00" if key == "MID" else key)
    c = key.split(".")
    if p.component and c[0] != p.component:
        c = [p.component, *c]  # the component left out
    elif not p.component and c[0] in ADAPTABLE and len(c) > 1:
        c = c[1:]  # "unet.up" on a bare UNet
    at = 1 if p.component else 0  # where a section word may stand
    if len(c) > at and c[at] in SECTION_ALIASES:
        c = [*c[:at], SECTION_ALIASES[c[at]], *c[at + 1 :]]
    prefix = ".".join(c)
    return p.path == prefix or p.path.startswith(prefix + ".")


def resolve(name: str, spec: Spec, places: list[LayerPlace]) -> list[float]:
    """Per layer (in the order of `places`), the strength `spec` gives adapter `name`. Raises ValueError
    for a malformed spec or a block name that matches none of the adapter's layers."""
    where = f"strength of {name!r}"
    if isinstance(spec, str):
        if not spec.startswith("lbw:"):
            raise ValueError(f"{where}: a string strength is 'lbw:<values or preset>', got {spec!r}")
        spec = {"lbw": spec[4:]}
    if not isinstance(spec, dict):
        return [_number(spec, where)] * len(places)
    values = [1.0] * len(places)
    for key, factor in spec.items():
        if key == "lbw":
            for i, v in enumerate(_lbw_values(name, factor, places, where)):
                values[i] *= v
            continue
        factor = _number(factor, f"{where}, {key!r}")
        if key == "*":
            values = [v * factor for v in values]
            continue
        hits = [i for i, p in enumerate(places) if _key_matches(key, p)]
        if not hits:
            raise ValueError(f"{where}: {key!r} names none of its layers; use a component "
                             f"({', '.join(sorted({p.component for p in places if p.component})) or 'none here'}), "
                             "a block (down / mid / up, down.1, up_blocks.2), an lbw id (IN01..OUT11, BASE) or a "
                             f"path prefix such as {places[0].path.rsplit('.', 2)[0]!r}")
        for i in hits:
            values[i] *= factor
    return values


def _lbw_values(name: str, text: Any, places: list[LayerPlace], where: str) -> list[float]:
    if not isinstance(text, str):
        text = ",".join(map(str, text)) if isinstance(text, (list, tuple)) else text
    if not isinstance(text, str):
        raise ValueError(f"{where}: lbw takes a string of values or a preset name, got {text!r}")
    if any(p.dit for p in places):
        return _dit_lbw_values(text, places, where)
    by_id, given = parse_lbw(text, where)
    if not any(p.block for p in places):
        raise ValueError(f"{where}: lbw weights address Stable Diffusion UNet blocks and text encoders; "
                         "this adapter has none (use per-path keys instead)")
    missing = sorted({p.block for p in places if p.block and p.block not in LBW_LAYOUTS[given]})
    if missing:
        warnings.warn(f"{where}: {given} lbw values give none for {', '.join(missing)}, where {name!r} has layers; "
                      "they get 0, as in sd-webui-lora-block-weight (26 values set every block)", stacklevel=4)
    return [1.0 if p.block is None else by_id[p.block] for p in places]


def _dit_lbw_values(text: str, places: list[LayerPlace], where: str) -> list[float]:
    """A transformer's block vector (BASE, then each double / joint block, then each single block) -> per layer."""
    length = next(p.dit[1] for p in places if p.dit)
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    for v in values:
        _number(v, where)
    if len(values) != length:
        raise ValueError(f"{where}: this model's lbw vector is {length} comma-separated numbers: BASE (text encoders "
                         f"and the layers outside the blocks), then one per double (or joint) block, then one per "
                         f"single block; got {text!r}")
    return [values[p.dit[0]] if p.dit else 1.0 for p in places]


def check_names(known: list[str], names: list[str]) -> None:
    missing = [n for n in names if n not in known]
    if missing:
        raise AdapterStateError(f"no adapter named {missing} in this bank; it has {known}")
