"""kohya sd-scripts / LyCORIS files: `lora_unet_<mangled path>.lora_down.weight` and friends.

Their module names are the host's dotted paths with "." turned into "_", which only resolve against a live
model's `named_modules()`; that resolution (a `resolve(file_module_names, model)` here) comes with reading
them. Until then these files are recognised and refused with a typed error, never misread as PEFT files.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import AdapterFormatError
from .adapter import AdapterFile

FORMAT = "kohya"
PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lycoris_")


def detect(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
    return any(k.startswith(PREFIXES) for k in tensors)


def read(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str, **options: Any) -> AdapterFile:
    raise AdapterFormatError("kohya/LyCORIS-named files are not supported yet", path=path,
                             category="unsupported-format")


def write(adapter: AdapterFile) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    raise AdapterFormatError("writing kohya/LyCORIS files is not supported yet", path=adapter.path,
                             category="unsupported-format")
