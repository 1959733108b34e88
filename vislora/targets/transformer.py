"""`transformer.*` presets: one set of names for every diffusion-transformer family (Flux.1, Flux.2, SD3).

Each family module (`flux`, `sd3`) lists its layers by group; a preset is the union of its groups over the
families, so `transformer.attn` picks the joint attention of whichever transformer it is given. A new family
is one more module in `FAMILY_GROUPS`.
"""

from . import flux, sd3
from .presets import Pattern, Preset

FAMILY_GROUPS = (flux.GROUPS, sd3.GROUPS)

# preset name -> (groups, doc)
_PRESETS = {
    "attn": (("attn",), "joint attention of both streams: to_q/to_k/to_v/to_out.0 and add_q/k/v_proj/to_add_out "
                        "(SD3.5: attn2 too)"),
    "ff": (("ff",), "feed-forwards of both streams (ff, ff_context)"),
    "single": (("single",), "single-stream blocks (Flux.1 attn.to_q/k/v, proj_mlp, proj_out; Flux.2 "
                            "attn.to_qkv_mlp_proj, attn.to_out)"),
    "blocks": (("attn", "ff", "single"), "attention, feed-forwards and single-stream blocks"),
    "mod": (("mod",), "modulation (adaLN) layers"),
    "embed": (("embed",), "input/output and time/text embedders"),
    "all": (("attn", "ff", "single", "mod"), "every layer of the blocks, modulation included (kohya's default)"),
}


def _patterns(groups: tuple[str, ...]) -> tuple[Pattern, ...]:
    found: list[Pattern] = []
    for family in FAMILY_GROUPS:
        for group in groups:
            found += [p for p in family[group] if p not in found]
    return tuple(found)


PRESETS = {f"transformer.{name}": Preset("transformer", _patterns(groups), doc)
           for name, (groups, doc) in _PRESETS.items()}
