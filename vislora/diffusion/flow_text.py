"""Prompt embeddings of the diffusion-transformer pipelines, through each pipeline's own `encode_prompt`:

    SD3     both CLIP encoders' penultimate states side by side, padded to T5's width, then T5's states (zeros
            without T5) [B, 77 + T5 tokens, D]; pooled: both CLIP projections [B, 768 + 1280]
    Flux.1  T5's states [B, T5 tokens, 4096]; pooled: CLIP's projection [B, 768]
    Flux.2  the language model's states [B, L, D]; no pooled

T5 tokens as the diffusers training scripts use them: 77 for SD3 (its --max_sequence_length), 512 for Flux.1
and Flux.2; prompts are embedded once while the text encoders are frozen (latents.TextCache).
"""

from __future__ import annotations

from typing import Any

import torch

from .flow_layout import TextInputs

MAX_SEQUENCE_LENGTH = {"SD3": 77, "Flux.1": 512, "Flux.2": 512}


def transformer_family(pipe: Any) -> str | None:
    """"SD3", "Flux.1" or "Flux.2" by the pipeline's transformer class (or the class it derives from: FSDP makes
    a subclass of a module it shards); None for other pipelines."""
    transformer = getattr(pipe, "transformer", None)
    families = {"SD3Transformer2DModel": "SD3", "FluxTransformer2DModel": "Flux.1",
                "Flux2Transformer2DModel": "Flux.2"}
    classes = type(transformer).__mro__ if transformer is not None else ()
    return next((families[c.__name__] for c in classes if c.__name__ in families), None)


def encode_flow_prompts(pipe: Any, prompts: list[str], device: torch.device | str | None = None,
                        max_sequence_length: int | None = None) -> TextInputs:
    """The pipeline's conditioning for `prompts`, without classifier-free guidance's negative half."""
    family = transformer_family(pipe)
    length = max_sequence_length or MAX_SEQUENCE_LENGTH[family]
    if family == "SD3":
        hidden, _, pooled, _ = pipe.encode_prompt(prompts, None, None, device=device, do_classifier_free_guidance=False,
                                                  max_sequence_length=length)
        return TextInputs(hidden, pooled)
    if family == "Flux.1":
        hidden, pooled, _ = pipe.encode_prompt(prompts, None, device=device, max_sequence_length=length)
        return TextInputs(hidden, pooled)
    hidden, _ = pipe.encode_prompt(prompts, device=device, max_sequence_length=length)
    return TextInputs(hidden, None)
