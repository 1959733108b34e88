"""Where in the base model each module of a file sits: component, and for UNet modules the LoRA Block
Weight id (IN00..IN11, M00, OUT00..OUT11; text encoders are BASE), as inspect reports coverage."""

from __future__ import annotations

from typing import Any

from ..formats import AdapterFile, FORMATS
from ..formats import kohya_names
from ..formats.arch import of_file
from .skeleton import base_model

try:  # the block table of vislora.targets, where present
    from ..targets.blocks import ldm_block as _ldm_block
except ImportError:  # pragma: no cover - older layouts
    _ldm_block = None


def lbw_id(path: str, ldm: dict[str, str]) -> str | None:
    """The lbw id of a diffusers UNet module path, from the LDM block it maps to (kohya_names)."""
    if _ldm_block is not None:
        return _ldm_block(path)
    if path.startswith("conv_in"):
        return "IN00"
    mapped = kohya_names.ldm_path(path, ldm)
    if mapped is None:
        return None
    head, index = mapped.split(".")[:2]
    return {"input_blocks": f"IN{int(index):02d}", "middle_block": "M00",
            "output_blocks": f"OUT{int(index):02d}"}.get(head)


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
    """(modules per component, modules per lbw block, unresolved names)."""
    found, unresolved = locate(adapter)
    ldm = kohya_names.ldm_prefixes(kohya_names.skeleton(
        kohya_names.SDXL_BLOCKS if of_file(adapter.modules).name == "SDXL" else kohya_names.SD_BLOCKS))
    per_comp: dict[str, int] = {}
    per_block: dict[str, int] = {}
    for comp, path in found.values():
        per_comp[comp or "model"] = per_comp.get(comp or "model", 0) + 1
        unet = comp == "unet" or (comp == "" and path.split(".")[0] in kohya_names.UNET_ROOTS)
        block = lbw_id(path, ldm) if unet else ("BASE" if comp.startswith("text_encoder") else None)
        key = block or ("other" if unet else comp or "model")
        per_block[key] = per_block.get(key, 0) + 1
    return per_comp, dict(sorted(per_block.items(), key=lambda kv: _block_order(kv[0]))), unresolved


def _block_order(block: str) -> tuple[int, int, str]:
    for rank, prefix in enumerate(("BASE", "IN", "M", "OUT")):
        if block.startswith(prefix):
            digits = block[len(prefix):]
            return rank, int(digits) if digits.isdigit() else 0, block
    return 9, 0, block


