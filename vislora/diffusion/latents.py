"""What a diffusion recipe trains on, prepared once: pictures at their bucket size, their latent
distributions (the VAE is frozen) and prompt embeddings (while the text encoders are frozen).

    items = load_items(captioned, sizes)                  # pixels uint8 [3, h, w], bucket, crop per picture
    cached = cache_latents(vae, items, device)            # (mean, std) [4, h/8, w/8] per picture
    mean, std = latent_params(vae, items, [0, 3], cached, device)   # a batch; cached=None encodes it now
    text = TextCache(base, enabled=True); emb = text(["a sks dog"], device)

A step samples each latent as mean + std * e with its own e, as encoding every step would, so caching
changes the cost of a step, not what it computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .bases import DiffusionBase
from .pipeline import PromptEmbeds, encode_prompts
from .buckets import assign, fit
from .captions import Captioned
from ..images import decode_image


@dataclass
class Items:
    """Training pictures at their bucket size: pixels uint8 [3, h, w], captions, bucket index, crop (top, left)."""

    data: Captioned
    pixels: list[torch.Tensor]
    buckets: list[int]
    crops: list[tuple[int, int]]


def load_items(data: Captioned, sizes: list[tuple[int, int]]) -> Items:
    pixels, buckets, crops = [], [], []
    for path, size in zip(data.paths, data.sizes):
        b = assign(sizes, size)
        x, crop = fit(decode_image(path), sizes[b])
        pixels.append(((x + 1) * 127.5).round().to(torch.uint8))  # exact: fit's values are k / 127.5 - 1
        buckets.append(b)
        crops.append(crop)
    return Items(data, pixels, buckets, crops)


@torch.no_grad()
def cache_latents(vae: nn.Module, items: Items, device: torch.device | str, progress: bool = False) -> list[tuple[torch.Tensor, ...]]:
    """Each picture's latent distribution (mean, std) [4, h/8, w/8], encoded once (the VAE is frozen)."""
    out = []
    for x in tqdm(items.pixels, desc="caching latents", disable=None if progress else True, leave=False):
        dist = vae.encode(x[None].to(device, torch.float32) / 127.5 - 1.0).latent_dist
        out.append((dist.mean[0].cpu(), dist.std[0].cpu()))
    return out


def latent_params(vae: nn.Module, items: Items, indices: list[int], cached, device) -> tuple[torch.Tensor, torch.Tensor]:
    if cached is not None:
        return (torch.stack([cached[i][0] for i in indices]).to(device),
                torch.stack([cached[i][1] for i in indices]).to(device))
    with torch.no_grad():  # --no-cache: the VAE encodes the batch every step
        pixels = torch.stack([items.pixels[i] for i in indices]).to(device, torch.float32) / 127.5 - 1.0
        dist = vae.encode(pixels).latent_dist
    return dist.mean, dist.std


class TextCache:
    """Prompt embeddings, computed once per distinct prompt while the text encoders are frozen."""

    def __init__(self, base: DiffusionBase, enabled: bool) -> None:
        self.base, self.enabled, self.store = base, enabled, {}

    def __call__(self, prompts: list[str], device) -> PromptEmbeds:
        if not self.enabled:
            return encode_prompts(self.base.pipe, prompts, device=device)
        for p in set(prompts) - set(self.store):
            with torch.no_grad():
                e = encode_prompts(self.base.pipe, [p], device=device)
            self.store[p] = PromptEmbeds(e.hidden[0], None if e.pooled is None else e.pooled[0])
        rows = [self.store[p] for p in prompts]
        pooled = None if rows[0].pooled is None else torch.stack([r.pooled for r in rows])
        return PromptEmbeds(torch.stack([r.hidden for r in rows]), pooled)
