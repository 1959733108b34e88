"""A quantized frozen denoiser, through diffusers' own quantization configs: `--quantize-base int8|nf4`.

    config = quantization("int8", ["transformer", "vae", ...])   # TorchAoConfig(Int8WeightOnlyConfig()) on the
    DiffusionPipeline.from_pretrained(folder, quantization_config=config)   # transformer (or UNet) only
    lean_backward(pipe.transformer)

Only the denoiser is quantized: it holds most of the weights, and the adapters on it read its inputs and add to
its outputs without touching its weights (vislora.layers runs them beside a quantized base layer, never merged
into it). The text encoders and the VAE stay as they load; the adapters and the optimizer stay in full precision.
Each library is optional (`pip install 'vislora[quantized]'` gives torchao).

Training through a torchao-quantized Linear, autograd keeps the weight as the layer dequantized it, dense, from
forward to backward (it needs it for the input gradient), for every layer at once: as much memory as the
unquantized base. `lean_backward` makes such layers run their quantized forward again in backward instead,
one layer at a time (bench/README.md measures both).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..layers import quantized

DENOISERS = ("unet", "transformer")  # a pipeline has one of them


@dataclass(frozen=True)
class Quantizer:
    """One --quantize-base choice: the library it needs, whether it runs without a CUDA GPU, what it does, and
    diffusers' config for it (built only once the library is known to be there)."""

    library: str
    runs_on_cpu: bool
    what: str
    config: Callable[[], Any]


def _torchao_int8() -> Any:
    from diffusers import TorchAoConfig
    from torchao.quantization import Int8WeightOnlyConfig

    return TorchAoConfig(Int8WeightOnlyConfig())


def _bitsandbytes_nf4() -> Any:
    from diffusers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


QUANTIZERS = {
    "int8": Quantizer("torchao", True, "int8 weights, one scale per output row (torchao, CPU and CUDA)",
                      _torchao_int8),
    "nf4": Quantizer("bitsandbytes", False, "4-bit NormalFloat weights, bf16 compute (bitsandbytes, CUDA only)",
                     _bitsandbytes_nf4),
}


def quantizer_rule(value: str) -> str | None:
    """vislora.checks rule for --quantize-base: a known choice, its library installed, a GPU where it needs one."""
    choice = QUANTIZERS.get(value)
    if choice is None:
        return f"must be one of {', '.join(QUANTIZERS)} (int8 runs on CPU and CUDA)"
    if importlib.util.find_spec(choice.library) is None:
        extra = "'vislora[quantized]'" if choice.library == "torchao" else choice.library
        return f"needs {choice.library}, which is not installed: pip install {extra}"
    if not choice.runs_on_cpu and not torch.cuda.is_available():
        return f"{choice.library} quantizes on a CUDA GPU only, and none is here; use --quantize-base int8"
    return None


def quantization(name: str, components: Iterable[str]) -> Any:
    """diffusers' pipeline-level config that quantizes the denoiser among the pipeline's `components` (the
    names in its model_index.json)."""
    from diffusers.quantizers import PipelineQuantizationConfig

    config = QUANTIZERS[name].config()
    return PipelineQuantizationConfig(quant_mapping={c: config for c in DENOISERS if c in components})


def describe(name: str) -> dict[str, str]:
    """What the base record says of the quantization: the choice, its library and version."""
    from importlib.metadata import version

    library = QUANTIZERS[name].library
    return {"scheme": name, "library": library, "version": version(library)}


class _InputGradient(torch.autograd.Function):
    """A frozen quantized Linear's output, keeping nothing for backward but the layer. The input gradient,
    grad @ W, does not depend on the input: backward runs the layer's own quantized forward again on zeros and
    takes autograd's gradient of that, so the layer's dense weight exists for this layer's backward only, made
    the way its forward makes it (torchao's dequantize() alone peaks at several times the dense size)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
        ctx.layer, ctx.dtype = layer, x.dtype
        return nn.Linear.forward(layer, x)  # the quantized weight's own linear; grad mode is off in here

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        zeros = grad.new_zeros(*grad.shape[:-1], ctx.layer.in_features).requires_grad_()  # [..., in]
        with torch.enable_grad():
            out = nn.Linear.forward(ctx.layer, zeros)                                     # [..., out]
        (into,) = torch.autograd.grad(out, zeros, grad.to(out.dtype))
        return into.to(ctx.dtype), None


class LeanQuantizedLinear(nn.Linear):
    """An nn.Linear with a frozen quantized weight that keeps no dense copy of it for backward (its class is
    swapped in place: its state dict, its path in the model and isinstance(nn.Linear) stay as they were)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _InputGradient.apply(x, self)
        return super().forward(x)


def lean_backward(model: nn.Module) -> int:
    """Make every frozen plain nn.Linear of `model` whose weight is quantized (torchao's weight-only tensors:
    the layer stays linear in its input) a LeanQuantizedLinear; returns how many. bitsandbytes' layers are
    their own classes, whose backward already dequantizes again, and are left as they are."""
    count = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if type(module) is nn.Linear and quantized(weight) and not weight.requires_grad:
            module.__class__ = LeanQuantizedLinear
            count += 1
    return count
