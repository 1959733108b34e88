"""A model is either one nn.Module or a diffusers pipeline of several; adapters address components.

For a plain module there is one component, named "". For a pipeline, the adaptable components are its
nn.Module parts (`unet`, `text_encoder`, ...); presets name their component by family ("unet.attn" ->
unet, "text.attn" -> text_encoder), and user patterns by their first segment ("unet.down_blocks.*").
Saved keys and reported paths carry the component as a prefix ("unet.<path>"), the diffusers layout.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .targets import PRESETS, TargetRule

ADAPTABLE = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
FAMILY_COMPONENT = {"unet": "unet", "transformer": "transformer", "text": "text_encoder", "text2": "text_encoder_2",
                    "text3": "text_encoder_3"}


def components(model: Any) -> dict[str, nn.Module]:
    if isinstance(model, nn.Module):
        return {"": model}
    parts = getattr(model, "components", None)
    if isinstance(parts, dict):
        found = {k: v for k, v in parts.items() if k in ADAPTABLE and isinstance(v, nn.Module)}
        if found:
            return found
    raise TypeError(f"expected an nn.Module or a diffusers pipeline, got {type(model).__name__}")


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    """Put `module` at dotted `path` inside root (replacing what is there)."""
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, child, module)


def is_pipeline(model: Any) -> bool:
    return not isinstance(model, nn.Module)


def prefixed(component: str, path: str) -> str:
    return f"{component}.{path}" if component else path


def route(model: Any, rules: list[TargetRule]) -> dict[str, list[TargetRule]]:
    """Split rules by the component they address; patterns lose their component prefix."""
    parts = components(model)
    if not is_pipeline(model):
        return {"": list(rules)}
    routed: dict[str, list[TargetRule]] = {}
    for rule in rules:
        if rule.pattern in PRESETS:
            family = PRESETS[rule.pattern].family
            name = FAMILY_COMPONENT.get(family)
            if name not in parts:
                raise ValueError(f"preset {rule.pattern!r} adapts a {family!r} model; this pipeline has {list(parts)}")
            routed.setdefault(name, []).append(rule)
            continue
        body = rule.pattern[3:] if rule.pattern.startswith("re:") else rule.pattern
        head, _, rest = body.partition(".")
        if head not in parts or not rest:
            raise ValueError(
                f"on a pipeline, a pattern starts with the component it adapts ({', '.join(parts)}): "
                f"e.g. 'unet.down_blocks.*.attn2.to_k'; got {rule.pattern!r}"
            )
        local = ("re:" + rest) if rule.pattern.startswith("re:") else rest
        routed.setdefault(head, []).append(TargetRule(local, rule.rank, rule.alpha))
    return routed
