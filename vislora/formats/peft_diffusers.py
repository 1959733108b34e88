"""diffusers / PEFT LoRA files: `<path>.lora_A.weight` / `<path>.lora_B.weight` and their older spellings.

Read (formats spec section 5): current PEFT names, the `lora.down/up` and `lora_linear_layer` spellings,
the old attention-processor names (`attn1.processor.to_q_lora.down.weight`), PEFT's `base_model.model.`
prefix, and the component prefixes `unet.`, `text_encoder.`, `text_encoder_2.`. The scale comes from
`lora_adapter_metadata` (r, lora_alpha, rank_pattern, alpha_pattern, use_rslora) or, without it, is 1.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from ..components import ADAPTABLE
from ..errors import AdapterFormatError
from ..targets.families import family_of
from .adapter import AdapterFile, ModuleWeights
from .checks import MAX_JSON_BYTES, finite_alpha, json_object, matrix_factors

FORMAT = "peft_diffusers"
ALIASES = ("diffusers",)  # diffusers' files use PEFT's key layout
METADATA_KEY = "lora_adapter_metadata"
# vislora factor -> PEFT's tensor name; lora_mid is LyCORIS's name for the Tucker core, which PEFT and
# diffusers' load_lora_weights do not read (they refuse such files: lora_A's 1 x 1 shape does not fit).
PEFT_FACTOR = {"down": "lora_A", "up": "lora_B"}
FILE_FACTOR = {**PEFT_FACTOR, "mid": "lora_mid"}


def peft_readable(factors: tuple[str, ...]) -> bool:
    """Whether PEFT / diffusers apply an adapter with these factors (plain down/up: LoRA and LoCon)."""
    return set(factors) <= set(PEFT_FACTOR)

# key suffix -> factor, longest first so ".lora.down.weight" wins over a shorter match
_SUFFIXES = (
    (".lora_linear_layer.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"),
    (".lora_A.default.weight", "down"),
    (".lora_B.default.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora_mid.weight", "mid"),
    (".lora_magnitude_vector.weight", "magnitude"),
    (".lora_magnitude_vector", "magnitude"),
    (".alpha", "alpha"),
)
# Parts of other adapter methods we do not apply: loading them as plain LoRA would be silently wrong.
_UNSUPPORTED = (".lora_B.bias", ".dora_scale")
# Old attention-processor spelling: <attn>.processor.to_q_lora.down.weight -> <attn>.to_q
_PROCESSOR = re.compile(r"^(?P<attn>.*)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<part>down|up)\.weight$")
_TEXT_PROJ = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}
_PEFT_PREFIX = "base_model.model."


def split_key(key: str) -> tuple[str, str] | None:
    """(module path, factor) for a LoRA tensor key, or None if the key is not one."""
    m = _PROCESSOR.match(key)
    if m:
        proj = m["proj"]
        if ".self_attn" in m["attn"] or m["attn"].endswith("self_attn"):  # CLIP text encoder, monkey-patch era
            module = f"{m['attn']}.{_TEXT_PROJ[proj]}"
        else:
            module = f"{m['attn']}.{proj}" + (".0" if proj == "to_out" else "")
        return module, m["part"]
    # text-encoder attention in the monkey-patch era has no ".processor": self_attn.to_q_lora.down.weight
    m = re.match(r"^(?P<attn>.*self_attn)\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<part>down|up)\.weight$", key)
    if m:
        return f"{m['attn']}.{_TEXT_PROJ[m['proj']]}", m["part"]
    for suffix, factor in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], factor
    return None


def strip_prefix(path: str) -> str:
    return path[len(_PEFT_PREFIX):] if path.startswith(_PEFT_PREFIX) else path


def detect(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
    return any(split_key(k) is not None for k in tensors)


def folder(path: Path) -> tuple[Path, dict[str, Any]] | None:
    """A PEFT adapter folder: adapter_model.safetensors, read with the scale settings of adapter_config.json
    (any folder is taken for one, so a folder without the file gets the container's missing-file error)."""
    weights, config_file = path / "adapter_model.safetensors", path / "adapter_config.json"
    if not config_file.is_file():
        return weights, {}
    if config_file.stat().st_size > MAX_JSON_BYTES:
        raise AdapterFormatError(f"adapter_config.json is {config_file.stat().st_size:,} bytes (limit "
                                 f"{MAX_JSON_BYTES:,})", path=config_file, category="bad-metadata")
    return weights, {"peft_config": json_object(config_file.read_bytes(), "adapter_config.json", config_file)}


def _kind(factors: dict[str, torch.Tensor]) -> str:
    if "mid" in factors:
        return "tucker"
    return "locon" if factors["down"].dim() == 4 else "lora"


def _peft_alpha(config: dict[str, Any], module: str, rank: int, path: str) -> tuple[float, bool]:
    """PEFT's rule: alpha_pattern entry whose regex matches the module's tail, else lora_alpha."""
    alpha, where = config.get("lora_alpha", rank), "lora_alpha"
    patterns = config.get("alpha_pattern") or {}
    if not isinstance(patterns, dict):
        raise AdapterFormatError(f"alpha_pattern must map module patterns to alphas, got {patterns!r}"[:300],
                                 path=path, category="bad-metadata")
    for pattern, value in patterns.items():
        try:
            found = re.match(rf"(.*\.)?({pattern})$", module)
        except re.error as e:
            raise AdapterFormatError(f"alpha_pattern {pattern!r} is not a regular expression: {e}"[:300], path=path,
                                     category="bad-metadata") from None
        if found:
            alpha, where = value, f"alpha_pattern {pattern!r}"
            break
    return finite_alpha(alpha, f"module {module!r} ({where})", path), bool(config.get("use_rslora", False))


def scale_configs(metadata: dict[str, str], path: str) -> dict[str, dict[str, Any]]:
    """Per component prefix ("" for none): the LoraConfig fields in `lora_adapter_metadata`."""
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return {}
    flat = json_object(raw, METADATA_KEY, path)
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        comp, _, field = key.rpartition(".") if key.count(".") == 1 else ("", "", key)
        out.setdefault(comp, {})[field] = value
    return out


def read(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str,
         peft_config: dict[str, Any] | None = None) -> AdapterFile:
    """Group LoRA tensors by module, each with the rank and alpha the file gives it (per module)."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    leftovers = []
    for key, value in tensors.items():
        if key.endswith(_UNSUPPORTED):
            raise AdapterFormatError(
                f"{key!r}: LoRA biases (and kohya dora_scale in a diffusers file) are not supported; loading this file as plain "
                "LoRA would change its effect", path=path, category="unsupported")
        split = split_key(key)
        if split is None:
            leftovers.append(key)
            continue
        module, factor = split
        module = strip_prefix(module)
        if factor in grouped.setdefault(module, {}):
            raise AdapterFormatError(f"module {module!r} has two {factor!r} tensors (two spellings of one key?)",
                                     path=path, category="duplicate")
        grouped[module][factor] = value
    configs = scale_configs(metadata, path)
    modules = {}
    for module, factors in grouped.items():
        if "down" not in factors or "up" not in factors:
            raise AdapterFormatError(f"module {module!r} has {sorted(factors)} but needs both down (lora_A) "
                                     "and up (lora_B)", path=path, category="incomplete")
        matrix_factors(module, factors, ("down", "up", "mid"), path)
        rank = factors["down"].shape[0]
        alpha_t = factors.pop("alpha", None)
        magnitude = factors.pop("magnitude", None)
        comp, _, local = module.partition(".")
        config = peft_config if peft_config is not None else configs.get(comp, configs.get("", None))
        if alpha_t is not None:
            if alpha_t.numel() != 1 or alpha_t.is_meta:
                raise AdapterFormatError(f"{module}.alpha has shape {list(alpha_t.shape)}; it must be a scalar",
                                         path=path, category="bad-alpha")
            alpha, rslora = finite_alpha(alpha_t.float().reshape(-1)[0].item(), f"{module}.alpha", path), False
        elif config is not None:
            alpha, rslora = _peft_alpha(config, local if comp in configs else module, rank, path)
        else:
            alpha, rslora = float(rank), False  # no alpha anywhere: scale 1, as every consumer does
        modules[module] = ModuleWeights(_kind(factors), factors, rank, alpha, rslora)
        if magnitude is not None:  # PEFT's DoRA: output rows, [out] (Linear) or [1, out, 1, 1] (Conv2d)
            out = factors["up"].shape[0]
            if magnitude.numel() != out:
                raise AdapterFormatError(f"{module}: lora_magnitude_vector has {magnitude.numel()} entries, lora_B "
                                         f"has {out} rows", path=path, category="shape-mismatch")
            modules[module].magnitude = magnitude.reshape(out, *[1] * (factors["down"].dim() - 1))
    if leftovers:
        raise AdapterFormatError(f"{len(leftovers)} keys are not LoRA tensors, e.g. {leftovers[:5]}", path=path,
                                 category="unknown-keys")
    return AdapterFile(path, FORMAT, modules, {}, None, metadata)


def component(path: str) -> str:
    """The pipeline component a module path starts with ("unet.", "text_encoder." ...), or ""."""
    head = path.partition(".")[0]
    return head if head in ADAPTABLE and "." in path else ""


def module_tensors(path: str, w: ModuleWeights) -> tuple[dict[str, torch.Tensor], int, float]:
    """One module's file tensors in the PEFT layout (sliced LoRA as its plain equivalent), its rank as written,
    and the alpha that gives its scale under PEFT's plain alpha / rank rule."""
    factors, rank = w.plain()
    unknown = sorted(set(factors) - set(FILE_FACTOR))
    if unknown:
        raise ValueError(f"{path}: a {w.kind!r} adapter (factors {unknown}) has no PEFT-layout spelling")
    tensors = {f"{path}.{FILE_FACTOR[n]}.weight": t for n, t in factors.items()}
    if w.magnitude is not None:
        if w.magnitude.shape[0] == 1 and w.magnitude.numel() > 1:
            raise ValueError(f"{path}: its DoRA magnitude is per input column; PEFT's normalises output rows "
                             "(write it with --to lycoris)")
        conv = w.magnitude.dim() == 4
        tensors[f"{path}.lora_magnitude_vector"] = w.magnitude.reshape(1, -1, 1, 1) if conv else w.magnitude.flatten()
    return tensors, rank, w.scale * rank


def write(adapter: AdapterFile) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The PEFT/diffusers layout: lora_A/lora_B(/lora_mid) tensors, scales in lora_adapter_metadata."""
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, tuple[str, int, float]] = {}
    prefix = denoiser_prefix(adapter)
    for path, w in adapter.modules.items():
        path = prefix + path
        found, rank, alpha = module_tensors(path, w)
        tensors.update(found)
        entries[path] = (component(path), rank, alpha)
    tensors.update(adapter.extra)
    return tensors, {"format": "pt", METADATA_KEY: lora_adapter_metadata(entries, dora_components(adapter))}


def denoiser_prefix(adapter: AdapterFile) -> str:
    """"transformer." for an adapter of a bare diffusion transformer (no component prefix), which diffusers'
    Flux / Flux.2 / SD3 loaders only read under that prefix; "" otherwise (bare UNet files load as they are)."""
    if any(component(p) for p in adapter.modules) or adapter.extra:
        return ""
    family = family_of(adapter.modules)
    return f"{family.component}." if family is not None and family.component == "transformer" else ""


def dora_components(adapter: AdapterFile) -> set[str]:
    """Components whose modules are DoRA. PEFT's use_dora holds for a whole component (modules without a
    stored magnitude would start from the weight's norm, not act as plain LoRA), so mixing is refused."""
    dora: dict[str, set[bool]] = {}
    for path, w in adapter.modules.items():
        dora.setdefault(component(path), set()).add(w.magnitude is not None)
    mixed = [c or "model" for c, flags in dora.items() if len(flags) > 1]
    if mixed:
        raise ValueError(f"{mixed}: some modules are DoRA and some are not; PEFT's use_dora is all or none per "
                         "component (write it with --to lycoris)")
    return {c for c, flags in dora.items() if True in flags}


def lora_adapter_metadata(entries: dict[str, tuple[str, int, float]], dora: set[str] = frozenset()) -> str:
    """LoraConfig fields for diffusers, from {component-prefixed path: (component, file rank, alpha)}; the
    components in `dora` get use_dora.

    The most common rank and alpha per component become r / lora_alpha; the rest go to rank_pattern /
    alpha_pattern keyed by the escaped full path, which PEFT matches as `(.*\\.)?(<path>)$`.
    """
    by_comp: dict[str, dict[str, tuple[int, float]]] = {}
    for full, (comp, rank, alpha) in entries.items():
        local = full[len(comp) + 1:] if comp else full
        by_comp.setdefault(comp, {})[local] = (rank, alpha)
    flat: dict[str, Any] = {}
    for comp, mods in by_comp.items():
        r = Counter(rk for rk, _ in mods.values()).most_common(1)[0][0]
        a = Counter(al for _, al in mods.values()).most_common(1)[0][0]
        fields = {
            "r": r,
            "lora_alpha": a,
            "rank_pattern": {re.escape(m): rk for m, (rk, _) in sorted(mods.items()) if rk != r},
            "alpha_pattern": {re.escape(m): al for m, (_, al) in sorted(mods.items()) if al != a},
            "target_modules": sorted(mods),
            "use_rslora": False,
            "use_dora": comp in dora,
        }
        flat.update({(f"{comp}.{k}" if comp else k): v for k, v in fields.items()})
    return json.dumps(flat, indent=2, sort_keys=True)
