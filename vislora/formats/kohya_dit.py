"""kohya files of diffusion transformers: which original-layout name map each family uses (one line per
family), and the two entry points kohya.py calls. The maths is kohya_fused; the maps kohya_flux, kohya_sd3."""

from __future__ import annotations

from ..targets.families import MODELSPEC_KEY, family_named, family_of
from . import kohya_flux, kohya_fused, kohya_sd3
from .adapter import ModuleWeights

# family (targets.families) -> its kohya name map. Flux.2's original names (diffusers'
# _convert_kohya_flux2_lora_to_diffusers) are not mapped yet: its files keep lora_transformer_ names.
NAME_MAPS: dict[str, tuple[kohya_fused.Section, ...]] = {
    "Flux.1": kohya_flux.SECTIONS,
    "SD3": kohya_sd3.SECTIONS,
}


def read(modules: dict[str, ModuleWeights], path: str) -> dict[str, ModuleWeights]:
    """A kohya file's modules with original-layout names split onto diffusers paths (lora_transformer_ names,
    which kohya_names resolves against the model); files of other families unchanged."""
    family = family_of(modules)
    sections = NAME_MAPS.get(family.name) if family else None
    return kohya_fused.to_diffusers(modules, sections, path) if sections else modules


def write(modules: dict[str, ModuleWeights], metadata: dict[str, str]) -> dict[str, ModuleWeights] | None:
    """Transformer modules under their original-layout kohya names (fused where the original is), or None
    when the adapter is not of a mapped family (by its names, else by its `modelspec.architecture`, which
    adapter files taken from a model carry: q/v alone do not tell Flux.1 from SD3)."""
    family = family_of(modules) or family_named(metadata)
    sections = NAME_MAPS.get(family.name) if family else None
    if not sections:
        return None
    transformer = {p: w for p, w in modules.items() if not p.startswith(("text_encoder", "lora_te"))}
    rest = {p: w for p, w in modules.items() if p not in transformer}
    return {**kohya_fused.to_kohya(transformer, sections), **rest}


def modelspec(modules: dict[str, ModuleWeights], metadata: dict[str, str]) -> dict[str, str]:
    """{"modelspec.architecture": "<family>/lora"} for a transformer family's file, else {}."""
    family = family_of(modules) or family_named(metadata)
    return {MODELSPEC_KEY: f"{family.modelspec}/lora"} if family and family.modelspec else {}
