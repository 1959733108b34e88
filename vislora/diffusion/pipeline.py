"""Stable Diffusion pipelines for training and sampling: encode prompts, and draw images with fixed seeds.
Bases are loaded by vislora.diffusion.bases.

    emb = encode_prompts(base.pipe, ["a sks digit"])            # hidden [B, L, D], pooled [B, D] (SDXL) or None
    images = generate(base.pipe, ["a sks digit"], seeds=[0, 1], steps=20, size=512)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import AdapterCompatError
from .bases import BaseModelError, architecture


# -- prompts ------------------------------------------------------------------------------------------------
@dataclass
class PromptEmbeds:
    """Text conditioning: hidden [B, L, D] for cross-attention; pooled [B, D'] for SDXL's added conditioning."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None


def prompt_tokenizer(pipe: Any) -> Any:
    """The pipeline's (first) text tokenizer; Flux2Pipeline's `tokenizer` is a processor that holds one."""
    tokenizer = pipe.tokenizer
    return getattr(tokenizer, "tokenizer", tokenizer)


def _tokenizers(pipe: Any) -> list[tuple[Any, Any]]:
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    if any(t is None for t, _ in pairs):
        raise BaseModelError("the pipeline has no tokenizer; prompts cannot be encoded")
    return pairs


def tokens_cut(pipe: Any, prompt: str) -> int:
    """How many tokens of `prompt` the (first) tokenizer drops at its length limit (start/end tokens kept)."""
    tokenizer = prompt_tokenizer(pipe)
    ids = tokenizer(prompt, truncation=False, add_special_tokens=True)["input_ids"]
    return max(0, len(ids) - tokenizer.model_max_length)


def check_prompts(pipe: Any, prompts: dict[str, str]) -> list[str]:
    """A warning line for each prompt the tokenizer would cut; `prompts` maps where it comes from -> text."""
    found = []
    for where, prompt in prompts.items():
        cut = tokens_cut(pipe, prompt)
        if cut:
            found.append(f"{where}: the prompt is {cut} tokens longer than the tokenizer takes "
                         f"({prompt_tokenizer(pipe).model_max_length}); {cut} tokens were cut: {prompt[:60]!r}")
    return found


def encode_prompts(pipe: Any, prompts: list[str], *, device: torch.device | str | None = None) -> PromptEmbeds:
    """SD1/2: the text encoder's last hidden state. SDXL (as diffusers does): both encoders' penultimate
    hidden states side by side [B, 77, 768 + 1280], and the second encoder's pooled projection."""
    from .flow_text import encode_flow_prompts, transformer_family

    if transformer_family(pipe) is not None:  # SD3, Flux.1, Flux.2: the pipeline's own encode_prompt
        emb = encode_flow_prompts(pipe, prompts, device=device)
        return PromptEmbeds(emb.hidden, emb.pooled)
    hidden, pooled = [], None
    pairs = _tokenizers(pipe)
    for tokenizer, encoder in pairs:
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device or encoder.device)
        if len(pairs) == 1:
            hidden.append(encoder(ids)[0])
            continue
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out[0] if out[0].dim() == 2 else pooled
    return PromptEmbeds(torch.cat(hidden, dim=-1), pooled)


def sdxl_time_ids(original: tuple[int, int], crop: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """SDXL's micro-conditioning: (original h, w, crop top, left, target h, w) as a [6] tensor."""
    return torch.tensor([*original, *crop, *target], dtype=torch.float32)


# -- drawing ----------------------------------------------------------------------------------------------
def denoiser_of(pipe: Any) -> Any:
    """The pipeline's UNet, or its transformer (SD3, Flux)."""
    return getattr(pipe, "unet", None) or pipe.transformer


def default_size(pipe: Any) -> int:
    """The side in pixels the base draws by default: the denoiser's sample size (Flux: the pipeline's) x the VAE's."""
    denoiser = denoiser_of(pipe)
    sample = getattr(pipe, "default_sample_size", None) or denoiser.config.sample_size
    return sample * pipe.vae_scale_factor



@torch.no_grad()
def generate(pipe: Any, prompts: list[str], seeds: list[int], *, steps: int = 20, guidance: float = 7.5,
             size: int | None = None) -> list:
    """One PIL image per (prompt, seed) pair, each from its own seeded generator: the same call gives the
    same images, whatever else is drawn in the batch."""
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    denoiser = denoiser_of(pipe)
    size = size or default_size(pipe)
    device = denoiser.device
    generators = [torch.Generator(device).manual_seed(s) for s in seeds]
    return pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
                generator=generators, output_type="pil").images


def check_presets(pipe: Any, presets: list[str], flag: str = "--preset") -> None:
    """AdapterCompatError naming the flag when a preset is for a component this pipeline lacks."""
    from ..components import FAMILY_COMPONENT, components
    from ..targets import PRESETS

    parts = components(pipe)
    for name in presets:
        if name not in PRESETS:
            continue
        family = PRESETS[name].family
        if FAMILY_COMPONENT.get(family) not in parts:
            raise AdapterCompatError(f"{flag} {name}: this preset adapts a {family!r} model; this "
                                     f"{architecture(pipe)} pipeline has {', '.join(parts)}", category="preset")
