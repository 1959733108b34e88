"""A quantized frozen denoiser, through diffusers' own quantization configs: `--quantize-base int8|nf4`.

    config = quantization("int8")      # diffusers' TorchAoConfig(Int8WeightOnlyConfig())
    DiffusionPipeline.from_pretrained(folder, quantization_config=config)   # the UNet or transformer only

Only the denoiser is quantized: it holds most of the weights, and the adapters on it read its inputs and add to
its outputs without touching its weights (vislora.layers runs them beside a quantized base layer, never merged
into it). The text encoders and the VAE stay as they load; the adapters and the optimizer stay in full precision.
Each library is optional (`pip install 'vislora[quantized]'` gives torchao).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Callable, Iterable

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
    import torch
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
    if not choice.runs_on_cpu:
        import torch

        if not torch.cuda.is_available():
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
