"""kohya files of diffusion transformers: which original-layout name map each family uses (one line per
family), and the two entry points kohya.py calls. The maths is kohya_fused; the maps kohya_flux, kohya_sd3."""

from __future__ import annotations

import re

from ..functional import KINDS
from ..targets.families import MODELSPEC_KEY, family_named, family_of
from . import kohya_flux, kohya_fused, kohya_sd3, row_blocks
from .adapter import ModuleWeights

# family (targets.families) -> its kohya name map.
NAME_MAPS: dict[str, tuple[kohya_fused.Section, ...]] = {
    "Flux.1": kohya_flux.SECTIONS,
    "Flux.2": kohya_flux.SECTIONS_2,
    "SD3": kohya_sd3.SECTIONS,
}


# Flux.2 files share Flux.1's original names; its MLPs are wider, in rows per input width
_FLUX2_WIDE = ((re.compile(r"^lora_unet_single_blocks_\d+_linear1$"), 9),  # q, k, v + 2 x 3 gated (Flux.1: 3 + 4)
               (re.compile(r"^lora_unet_double_blocks_\d+_(?:img|txt)_mlp_0$"), 6))  # 2 x 3 gated (Flux.1: 4)


def is_flux2(modules: dict[str, ModuleWeights], metadata: dict[str, str]) -> bool:
    """Whether a file with Flux's original names is for Flux.2: by a wide MLP layer's shape, else by its
    `modelspec.architecture`."""
    for name, w in modules.items():
        for rx, ratio in _FLUX2_WIDE:
            if rx.match(name):
                try:
                    rows = row_blocks.out_rows(w)
                except row_blocks.Malformed:  # reading reports it
                    continue
                if rows is not None:
                    return rows == ratio * KINDS[w.kind].in_features(w.factors)
    named = family_named(metadata)
    return named is not None and named.name == "Flux.2"


def _family(modules: dict[str, ModuleWeights], metadata: dict[str, str]) -> str | None:
    family = family_of(modules) or family_named(metadata)
    if family is not None and family.name == "Flux.1" and is_flux2(modules, metadata):
        return "Flux.2"
    return family.name if family else None


def read(modules: dict[str, ModuleWeights], path: str, metadata: dict[str, str]) -> dict[str, ModuleWeights]:
    """A kohya file's modules with original-layout names split onto diffusers paths (lora_transformer_ names,
    which kohya_names resolves against the model); files of other families unchanged."""
    sections = NAME_MAPS.get(_family(modules, metadata))
    return kohya_fused.to_diffusers(modules, sections, path) if sections else modules


def write(modules: dict[str, ModuleWeights], metadata: dict[str, str], naming: str = "kohya"
          ) -> dict[str, ModuleWeights] | None:
    """Transformer modules under kohya names, or None when the adapter is not of a mapped family (by its
    names, else by its `modelspec.architecture`, which adapter files taken from a model carry: q/v alone do
    not tell Flux.1 from SD3). naming "kohya": the original layout's names, fused where the original layer
    is (other kinds only where one module has the parts' exact effect); "lycoris": `lycoris_` + the diffusers path, one module each, any kind (what
    LyCORIS' wrapper writes on a diffusers transformer: SimpleTuner's files). Names already in a kohya
    form stay."""
    sections = NAME_MAPS.get(_family(modules, metadata))
    if not sections:
        return None
    transformer = {p: w for p, w in modules.items() if not p.startswith(("text_encoder", "lora_te"))}
    rest = {p: w for p, w in modules.items() if p not in transformer}
    if naming == "lycoris":
        return {**{_lycoris_name(p): w for p, w in transformer.items()}, **rest}
    return {**kohya_fused.to_kohya(transformer, sections), **rest}


def _lycoris_name(path: str) -> str:
    local = path.removeprefix("transformer.")
    if local.startswith(kohya_fused.TRANSFORMER_PREFIX + "_"):
        return "lycoris" + local[len(kohya_fused.TRANSFORMER_PREFIX):]
    return local if local.startswith(("lora_", "lycoris_")) else f"lycoris_{local.replace('.', '_')}"


def modelspec(modules: dict[str, ModuleWeights], metadata: dict[str, str]) -> dict[str, str]:
    """{"modelspec.architecture": "<family>/lora"} for a transformer family's file, else {}."""
    family = family_of(modules) or family_named(metadata)
    return {MODELSPEC_KEY: f"{family.modelspec}/lora"} if family and family.modelspec else {}
