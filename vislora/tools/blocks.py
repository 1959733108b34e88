"""Where in the base model each module of a file sits: component, and for UNet modules the LoRA Block
Weight id (IN00..IN11, M00, OUT00..OUT11; text encoders are BASE), for diffusion transformers the block
(`double.N` / `single.N` for Flux, `joint.N` for SD3: the strength keys), as inspect reports coverage."""

from __future__ import annotations

import re
from typing import Any

from ..formats import AdapterFile, FORMATS
from ..formats import kohya_names
from ..formats.arch import of_file
from ..targets.blocks import ldm_block
from .skeleton import base_model

def locate(adapter: AdapterFile) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """{file module name: (component, path)} in the file's base model, and the names that resolve nowhere.

    Formats whose names carry the path take it as written; kohya names resolve against a stand-in of the
    base the shapes point to (SD1.x when they do not tell)."""
    fmt = FORMATS.get(adapter.format)
    names = list(adapter.modules)
    if hasattr(fmt, "resolve"):
        arch = of_file(adapter.modules).name or "SD1.x"
        found = fmt.resolve(names, base_model(arch))
    else:
        found = {}
        for n in names:
            comp, _, local = n.partition(".")
            found[n] = (comp, local) if comp in ("unet", "text_encoder", "text_encoder_2") else ("", n)
    return found, [n for n in names if n not in found]


# a transformer module's block, in any naming (dotted, lora_transformer_): group word and index
_DIT_BLOCK = re.compile(r"(?:^|[._])(single_transformer_blocks|transformer_blocks)[._](\d+)[._]")
_ENCODER_PREFIXES = (("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"), ("lora_te3_", "text_encoder_3"),
                     ("lora_te_", "text_encoder"), ("text_encoder_3.", "text_encoder_3"),
                     ("text_encoder_2.", "text_encoder_2"), ("text_encoder.", "text_encoder"))


def transformer_coverage(adapter: AdapterFile, family: str) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """Coverage of a diffusion-transformer file by names alone (they carry block and index in every naming
    vislora reads them into): per component, and per block `double.N` / `single.N` (Flux), `joint.N` (SD3)."""
    per_comp: dict[str, int] = {}
    per_block: dict[str, int] = {}
    for name in adapter.modules:
        comp = next((c for prefix, c in _ENCODER_PREFIXES if name.startswith(prefix)), "transformer")
        m = _DIT_BLOCK.search(name) if comp == "transformer" else None
        group = None if m is None else ("single" if m[1].startswith("single") else
                                        "joint" if family == "SD3" else "double")
        block = "BASE" if comp != "transformer" else (f"{group}.{m[2]}" if m else "other")
        per_comp[comp] = per_comp.get(comp, 0) + 1
        per_block[block] = per_block.get(block, 0) + 1
    order = lambda b: (("BASE", "double", "joint", "single", "other").index(b.split(".")[0]),  # noqa: E731
                       int(b.split(".")[1]) if "." in b else 0)
    return per_comp, dict(sorted(per_block.items(), key=lambda kv: order(kv[0]))), []


def coverage(adapter: AdapterFile) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """(modules per component, modules per lbw block, unresolved names).

    Blocks are the LoRA Block Weight ids of vislora.targets.blocks (the bank's own table); the stand-in bases
    inspect resolves against (SD1.x/SD2.x, SDXL) have two layers per block. Transformer files: see
    `transformer_coverage`."""
    family = of_file(adapter.modules).family
    if family not in (None, "UNet"):
        return transformer_coverage(adapter, family)
    found, unresolved = locate(adapter)
    per_comp: dict[str, int] = {}
    per_block: dict[str, int] = {}
    for comp, path in found.values():
        per_comp[comp or "model"] = per_comp.get(comp or "model", 0) + 1
        unet = comp == "unet" or (comp == "" and path.split(".")[0] in kohya_names.UNET_ROOTS)
        block = ldm_block(path) if unet else ("BASE" if comp.startswith("text_encoder") else None)
        key = block or ("other" if unet else comp or "model")
        per_block[key] = per_block.get(key, 0) + 1
    return per_comp, dict(sorted(per_block.items(), key=lambda kv: _block_order(kv[0]))), unresolved


def _block_order(block: str) -> tuple[int, int, str]:
    for rank, prefix in enumerate(("BASE", "IN", "M", "OUT")):
        if block.startswith(prefix):
            digits = block[len(prefix):]
            return rank, int(digits) if digits.isdigit() else 0, block
    return 9, 0, block


