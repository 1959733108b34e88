"""Warnings of optional libraries that ask nothing of the user, dropped for the whole process as vislora is
imported (before any of those libraries is).

With torchao installed (the `quantized` extra), importing a diffusers pipeline imports it, and three warnings
follow: diffusers' torchao quantizer cannot import older torchao releases' tensor classes (they only matter
for checkpoints saved quantized, which are pickles, refused here); it says integer quantization wants bf16
(int8 weight-only dequantizes to the base's own dtype, fp32 here, and runs there); and torch deprecates the way
torchao registers its enums.
"""

from __future__ import annotations

import logging

DROPPED = {
    "diffusers.quantizers.torchao.torchao_quantizer": ("Unable to import `torchao` Tensor objects",
                                                       "for integer quantization"),
    "torch.utils._pytree": ("is an Enum subclass and is now natively",),
}


class DropWarnings(logging.Filter):
    """A logging filter that drops the records whose message contains any of `phrases`."""

    def __init__(self, phrases: tuple[str, ...]) -> None:
        super().__init__()
        self.phrases = phrases

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(p in record.getMessage() for p in self.phrases)


for _name, _phrases in DROPPED.items():
    logging.getLogger(_name).addFilter(DropWarnings(_phrases))
