"""Targets in the diffusers UNet2DConditionModel (SD1.x, SD2.x, SDXL share these names)."""

from .presets import ANY_PREFIX, Pattern, Preset

_PROJ = r"\.(?:to_q|to_k|to_v|to_out\.0)"
_CROSS = Pattern(ANY_PREFIX + r"attn2" + _PROJ)
_ATTN = Pattern(ANY_PREFIX + r"attn[12]" + _PROJ)
_FF = Pattern(ANY_PREFIX + r"ff\.net\.(?:0\.proj|2)")
_CONV = (
    Pattern(ANY_PREFIX + r"resnets\.\d+\.(?:conv1|conv2|conv_shortcut)"),
    Pattern(ANY_PREFIX + r"(?:downsamplers|upsamplers)\.\d+\.conv"),
    Pattern(ANY_PREFIX + r"attentions\.\d+\.(?:proj_in|proj_out)"),
)
_TIME = Pattern(ANY_PREFIX + r"resnets\.\d+\.time_emb_proj")

PRESETS = {
    "unet.cross_attn": Preset("unet", (_CROSS,), "cross-attention (attn2) to_q/to_k/to_v/to_out"),
    "unet.attn": Preset("unet", (_ATTN,), "self- and cross-attention projections"),
    "unet.attn_ff": Preset("unet", (_ATTN, _FF), "attention projections and the feed-forward"),
    "unet.conv": Preset("unet", _CONV, "resnet convs, sampler convs, proj_in/proj_out (LoCon)"),
    "unet.all": Preset("unet", (_ATTN, _FF, *_CONV, _TIME), "attention, feed-forward, convs and time projections"),
}
