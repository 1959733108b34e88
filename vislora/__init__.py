"""vislora: LoRA and LoCon adapters for vision models (timm ViTs, diffusers UNets, CLIP text encoders).

    import vislora
    report = vislora.inject(model, "vit.attn", rank=8, alpha=8)      # preset, patterns, or AdapterConfig
    optimizer = torch.optim.AdamW(vislora.trainable_parameters(model), lr=1e-3)
    ...
    vislora.save_adapter(model, "a.safetensors")
    vislora.load_adapter(other_model, "a.safetensors", name="a", strength=0.8)
    vislora.merge(model); vislora.unmerge(model); vislora.remove(model)
    bank = vislora.AdapterBank(model); bank.load("a", "a.safetensors"); bank.set_strengths({"a": 0.7})

`model` is any nn.Module, or a diffusers pipeline (targets such as "unet.attn" and "text.attn" then go to
its unet and text_encoder).
"""

from . import quiet  # noqa: F401  (first: optional libraries' warnings that ask nothing of the user)
from .bank import AdapterBank
from .config import AdapterConfig
from .errors import (
    AdapterCompatError,
    AdapterFormatError,
    AdapterStateError,
    NonFiniteError,
    UnsafeFormatError,
    VisloraError,
)
from .inject import InjectReport, adapter_layers, adapter_names, inject, remove, status, trainable_parameters
from .merge import disabled, merge, set_strength, unmerge
from .io import AdapterWarning, LoadReport, load_adapter, read_adapter, save_adapter
from .layers import AdapterLayer
from .slot import AdapterSlot
from .targets import PRESETS
from .version import __version__

__all__ = [
    "AdapterBank",
    "AdapterCompatError",
    "AdapterConfig",
    "AdapterFormatError",
    "AdapterLayer",
    "AdapterSlot",
    "AdapterStateError",
    "AdapterWarning",
    "InjectReport",
    "LoadReport",
    "NonFiniteError",
    "PRESETS",
    "UnsafeFormatError",
    "VisloraError",
    "__version__",
    "adapter_layers",
    "adapter_names",
    "disabled",
    "inject",
    "load_adapter",
    "merge",
    "read_adapter",
    "remove",
    "save_adapter",
    "set_strength",
    "status",
    "trainable_parameters",
    "unmerge",
]
