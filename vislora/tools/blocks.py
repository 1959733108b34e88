"""Where in the base model each module of a file sits: component, and for UNet modules the LoRA Block
Weight id (IN00..IN11, M00, OUT00..OUT11; text encoders are BASE), as inspect reports coverage."""

from __future__ import annotations

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


def coverage(adapter: AdapterFile) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """(modules per component, modules per lbw block, unresolved names).

    Blocks are the LoRA Block Weight ids of vislora.targets.blocks (the bank's own table); the stand-in bases
    inspect resolves against (SD1.x/SD2.x, SDXL) have two layers per block."""
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


