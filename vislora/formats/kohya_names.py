"""kohya / LyCORIS module names, resolved against a live model.

A kohya name is PREFIX + "_" + the module path with every "." replaced by "_". Underscores inside path
segments (`transformer_blocks`, `to_out`, `proj_in`) make that impossible to invert by string rules, so
the map is built from the model: every adaptable module of every component, under each naming it can have.

    lora_unet_<diffusers path>     SD1.x/SD2.x kohya files, and diffusers-named SDXL files
    lora_unet_<LDM/SGM path>       A1111-style SD1 files and kohya's SDXL files (input_blocks, middle_block, ...)
    lycoris_<path>                 LyCORIS' standalone wrapper (any model, path relative to the wrapped root; a
                                   diffusion transformer's diffusers paths: SimpleTuner's LyCORIS files)
    lora_te_<path>                 the single text encoder; lora_te1_ / lora_te2_ (/ lora_te3_) with two (three)
    lora_transformer_<path>        a diffusion transformer's diffusers path (OneTrainer's naming; kohya's own
                                   original-layout Flux / SD3 names are mapped onto these by kohya_dit)

The LDM paths come from walking the UNet's own blocks (resnets, attentions and samplers per block, counted
from the model), not from a table written for one architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..components import components
from ..targets import adaptable_modules

KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "lora_transformer_", "lycoris_")
KOHYA_COMPONENTS = ("lora_unet", "lora_transformer", "lora_te1", "lora_te2", "lora_te3", "lora_te", "lycoris")  # the longest match first
ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")

# ResnetBlock2D child -> its LDM name inside a ResBlock.
_RESNET_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
# Top-level UNet modules -> LDM names.
_TOP_LDM = {"conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
            "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
            "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}


def mangle(prefix: str, path: str) -> str:
    """`lora_unet` + `down_blocks.0.attentions.0.proj_in` -> `lora_unet_down_blocks_0_attentions_0_proj_in`."""
    return f"{prefix}_{path.replace('.', '_')}" if path else prefix


def _children(block: nn.Module, name: str) -> list[nn.Module]:
    found = getattr(block, name, None)
    return list(found) if found is not None else []


def ldm_prefixes(unet: nn.Module) -> dict[str, str]:
    """diffusers path prefix -> LDM/SGM path prefix, for every resnet, attention and sampler of a UNet.

    input_blocks count from 1 (0 is conv_in): each down-block resnet (with its attention) takes one index,
    then its downsampler one more. output_blocks count from 0: one per up-block resnet; the upsampler joins
    that block's last entry, after the attention if there is one (".2"), else after the resnet (".1").
    """
    table: dict[str, str] = {}
    index = 1
    for i, block in enumerate(_children(unet, "down_blocks")):
        index = _resnet_entries(table, f"down_blocks.{i}", block, "input_blocks", index)
        for k, _ in enumerate(_children(block, "downsamplers")):
            table[f"down_blocks.{i}.downsamplers.{k}.conv"] = f"input_blocks.{index}.0.op"
            index += 1
    mid = getattr(unet, "mid_block", None)
    if mid is not None:
        for j, _ in enumerate(_children(mid, "resnets")):
            table[f"mid_block.resnets.{j}"] = f"middle_block.{2 * j}"
        for j, _ in enumerate(_children(mid, "attentions")):
            table[f"mid_block.attentions.{j}"] = f"middle_block.{2 * j + 1}"
    index = 0
    for i, block in enumerate(_children(unet, "up_blocks")):
        index = _resnet_entries(table, f"up_blocks.{i}", block, "output_blocks", index)
        after = 2 if _children(block, "attentions") else 1
        for k, _ in enumerate(_children(block, "upsamplers")):
            table[f"up_blocks.{i}.upsamplers.{k}.conv"] = f"output_blocks.{index - 1}.{after}.conv"
    return table


def _resnet_entries(table: dict[str, str], source: str, block: nn.Module, target: str, index: int) -> int:
    """Each resnet of `block` (with its attention, if it has one) takes LDM index `index` onwards, as
    `target.<index>.0` (and `.1`); returns the next free index."""
    attentions = _children(block, "attentions")
    for j, _ in enumerate(_children(block, "resnets")):
        table[f"{source}.resnets.{j}"] = f"{target}.{index}.0"
        if j < len(attentions):
            table[f"{source}.attentions.{j}"] = f"{target}.{index}.1"
        index += 1
    return index


class _Blocks:
    """Stand-in for a UNet block with only the child counts `ldm_prefixes` reads."""

    def __init__(self, **counts: int) -> None:
        for name, n in counts.items():
            setattr(self, name, [None] * n)


def skeleton(config: dict[str, Any]) -> Any:
    """A stand-in with a diffusers UNet config's block structure (types and layers_per_block), for naming
    files without the model: down blocks have layers_per_block resnets (and attentions in CrossAttn blocks)
    and a downsampler but the last; up blocks one resnet more and an upsampler but the last."""
    layers = config.get("layers_per_block", 2)
    down_types, up_types = config["down_block_types"], config["up_block_types"]
    unet = _Blocks()
    unet.down_blocks = [_Blocks(resnets=layers, attentions=layers if "CrossAttn" in t else 0,
                                downsamplers=int(i < len(down_types) - 1)) for i, t in enumerate(down_types)]
    unet.up_blocks = [_Blocks(resnets=layers + 1, attentions=layers + 1 if "CrossAttn" in t else 0,
                              upsamplers=int(i < len(up_types) - 1)) for i, t in enumerate(up_types)]
    unet.mid_block = _Blocks(resnets=2, attentions=1)
    return unet


SDXL_BLOCKS = {"layers_per_block": 2, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
               "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")}
SD_BLOCKS = {"layers_per_block": 2, "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
             "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3}


def ldm_path(path: str, prefixes: dict[str, str]) -> str | None:
    """A diffusers UNet module path in LDM/SGM naming, or None where LDM has no such module."""
    if path in _TOP_LDM:
        return _TOP_LDM[path]
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        head = ".".join(parts[:cut])
        if head in prefixes:
            rest = parts[cut:]
            if ".resnets." in f".{head}." and rest:
                if rest[0] not in _RESNET_LDM:
                    return None
                rest = _RESNET_LDM[rest[0]].split(".") + rest[1:]
            return ".".join([prefixes[head], *rest])
    return None


def te_path(root: nn.Module, path: str) -> str:
    """A text-encoder path as files name it: HF CLIP paths start at `text_model.`, which transformers 5's
    CLIPTextModel no longer has (diffusers strips it on load for the same reason); T5's are its own."""
    clip = type(root).__name__.startswith("CLIP")
    return path if hasattr(root, "text_model") or not clip else f"text_model.{path}"


def is_unet(module: nn.Module) -> bool:
    return hasattr(module, "down_blocks") and hasattr(module, "up_blocks")


def component_prefixes(model: Any) -> dict[str, str]:
    """kohya prefix of each component: UNet lora_unet; text encoders lora_te (one) or lora_te1/lora_te2
    (two); any other model (a bare ViT, say) the LyCORIS wrapper's lycoris."""
    parts = components(model)
    encoders = [c for c in ENCODERS if c in parts]
    prefixes = {}
    for comp, root in parts.items():
        if comp in ("unet", "") and is_unet(root):
            prefixes[comp] = "lora_unet"
        elif comp in ("transformer", "") and hasattr(root, "transformer_blocks"):
            prefixes[comp] = "lora_transformer"
        elif comp in encoders:
            prefixes[comp] = "lora_te" if len(encoders) == 1 else f"lora_te{encoders.index(comp) + 1}"
        elif comp == "" and (hasattr(root, "text_model") or type(root).__name__.startswith("CLIPText")):
            prefixes[comp] = "lora_te"
        else:
            prefixes[comp] = "lycoris"
    return prefixes


@dataclass
class NameMap:
    """kohya name <-> (component, module path) for one model, in every naming.

    `names[naming][(component, path)]` is a module's name in that naming: "diffusers" (kohya's SD1 names,
    HF CLIP paths for text encoders), "ldm" (LDM/SGM UNet paths), "lycoris" (the wrapper's), "raw" (a
    text encoder's own paths where they differ from HF CLIP's);
    `modules[name]` the way back. Names two modules would share are left out and listed in `ambiguous`.
    """

    names: dict[str, dict[tuple[str, str], str]] = field(default_factory=dict)
    modules: dict[str, tuple[str, str]] = field(default_factory=dict)
    ambiguous: set[str] = field(default_factory=set)

    def add(self, naming: str, where: tuple[str, str], name: str) -> None:
        self.names.setdefault(naming, {})[where] = name
        if name in self.ambiguous:
            return
        if name in self.modules and self.modules[name] != where:
            self.ambiguous.add(name)
            del self.modules[name]
            return
        self.modules[name] = where

    def naming_of(self, name: str) -> str | None:
        where = self.modules.get(name)
        if where is None:
            return None
        return next((n for n, table in self.names.items() if table.get(where) == name), None)


def build(model: Any) -> NameMap:
    """Every adaptable module of `model` (a module or a pipeline) under each of its kohya names."""
    names = NameMap()
    for comp, prefix in component_prefixes(model).items():
        root = components(model)[comp]
        paths = list(adaptable_modules(root))
        ldm = ldm_prefixes(root) if prefix == "lora_unet" else None
        text = prefix.startswith("lora_te")
        for path in paths:
            where = (comp, path)
            names.add("diffusers", where, mangle(prefix, te_path(root, path) if text else path))
            if text and te_path(root, path) != path:
                names.add("raw", where, mangle(prefix, path))
            if ldm is not None or prefix == "lora_transformer":  # LyCORIS' wrapper on the denoiser itself
                names.add("lycoris", where, mangle("lycoris", path))
            if ldm is not None:
                sgm = ldm_path(path, ldm)
                if sgm is not None:
                    names.add("ldm", where, mangle(prefix, sgm))
    return names


UNET_ROOTS = ("down_blocks", "mid_block", "up_blocks", "conv_in", "conv_out", "conv_norm_out", "time_embedding",
              "add_embedding")
TE_ROOTS = ("text_model", "encoder", "embeddings", "final_layer_norm", "text_projection")


def component_of(name: str) -> str | None:
    """The kohya prefix (lora_unet, lora_te1, lora_te2, lora_te, lycoris) a module name starts with, or None."""
    return next((p for p in KOHYA_COMPONENTS if name.startswith(p + "_")), None)


def name_for(full: str, has_te2: bool, ldm: dict[str, str] | None = None) -> str:
    """The kohya name of a component-prefixed module path, without a model: UNet paths in diffusers
    naming (or LDM/SGM naming when `ldm`, the UNet's `ldm_prefixes`, is given), text encoders with HF CLIP
    paths under lora_te / lora_te1 / lora_te2, anything else under the LyCORIS wrapper's `lycoris_`."""
    comp, _, local = full.partition(".")
    if comp == "transformer":
        return mangle("lora_transformer", local)
    if comp not in ("unet", *ENCODERS):
        root = full.split(".")[0]
        comp, local = ("unet" if root in UNET_ROOTS else "text_encoder" if root in TE_ROOTS else ""), full
    if comp == "unet":
        path = ldm_path(local, ldm) if ldm is not None else local
        return mangle("lora_unet", path or local)
    if comp.startswith("text_encoder"):
        if comp == "text_encoder_3":  # SD3's T5: its own paths
            return mangle("lora_te3", local)
        prefix = "lora_te2" if comp == "text_encoder_2" else ("lora_te1" if has_te2 else "lora_te")
        return mangle(prefix, local if local.startswith(("text_model.", "text_projection")) else f"text_model.{local}")
    return mangle("lycoris", full)
