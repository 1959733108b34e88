"""Preservation against the frozen base's own prediction ("diff output preservation"; kohya's
diff_output_preservation, ai-toolkit, OneTrainer's prior prediction): each instance sample gets a
preservation sample with the same noisy latent and timestep, and its target is what the base (every adapter
off) predicts there. No class images are drawn.

Which prompt that sample carries decides what is kept. The class prompt alone ("a handwritten digit") keeps
only itself; the prompts that drift are its neighbours ("a handwritten digit two", "a dog running"), whose
conditioning the class prompt never shows the model. So each preservation sample carries the class prompt
followed by one whole word of the tokenizer's vocabulary, drawn per sample (the class prompt alone is one
more choice): the adapter is asked to change the output only where the trigger is.

The empty prompt is kept the same way (--keep-unconditional; take_rows picks the samples). Classifier-free
guidance draws from u + g (c - u), the unconditional prediction u and the prompt's c. An adapter trained on
captions alone moves u about as far as c, by generalisation, and guidance then extrapolates from the styled u:
it pulls the drawings back toward the base (a bold style drawn at guidance 1 moved 97% of the way to its
pictures, at guidance 5 65%). With u held at the base's, guidance amplifies what the adapter changed instead
(docs/defaults.md has the measurements).

    neighbours = NeighbourPrompts("a handwritten digit", pipe.tokenizer, avoid={"sks"})
    prompts = neighbours(seeds)                                       # one prompt per preservation sample
    prior = base_prediction_batch(base, unet, text, part, prompts)    # UNetBatch, len(part)
    empty = base_prediction_batch(base, unet, text, take_rows(part, [0]), "")   # the empty prompt, one sample
    losses = denoise.unet_losses(unet, denoise.cat([part, prior]), ...)
"""

from __future__ import annotations

import random
from dataclasses import fields
from typing import Any, TypeVar

import torch
from torch import nn

from ..merge import disabled
from .bases import DiffusionBase
from .denoise import UNetBatch
from .latents import TextCache


Batch = TypeVar("Batch")


def take_rows(batch: Batch, rows: list[int]) -> Batch:
    """The samples `rows` of a training batch (a UNetBatch or FlowBatch: every tensor field by its first dim)."""
    return type(batch)(**{f.name: None if getattr(batch, f.name) is None else getattr(batch, f.name)[rows]
                          for f in fields(batch)})


def base_prediction_batch(base: DiffusionBase, unet: nn.Module, text: TextCache, part: UNetBatch,
                          prompt: str | list[str]) -> UNetBatch:
    """`part`'s noisy latents and timesteps with `prompt`'s text states (one prompt for every sample, or one
    per sample); the goal is the base's prediction there: every adapter on `base.pipe` (UNet and any trained
    text encoder) disabled, no gradient. `unet` is the unwrapped UNet (no DDP hooks)."""
    prompts = [prompt] * len(part) if isinstance(prompt, str) else list(prompt)
    emb = text(prompts, part.noisy.device)  # with the text encoders' adapters, as trained
    with torch.no_grad(), disabled(base.pipe):
        frozen = text(prompts, part.noisy.device) if not text.enabled else emb
        extra = {}
        if part.pooled is not None:  # SDXL: the class prompt's pooled embedding, the instance's size/crop ids
            extra["added_cond_kwargs"] = {"text_embeds": frozen.pooled, "time_ids": part.time_ids}
        goal = unet(part.noisy, part.t, frozen.hidden, **extra).sample
    return UNetBatch(part.noisy, part.t, emb.hidden, emb.pooled if part.pooled is not None else None,
                     part.time_ids, goal.to(part.goal.dtype))


def vocabulary_words(tokenizer: Any, avoid: set[str] = frozenset()) -> list[str]:
    """The tokenizer's whole words (one token each, ASCII letters only, two or more), in id order, but `avoid`."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    words = []
    for token, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        word = token.removesuffix("</w>")
        if token.endswith("</w>") and word.isalpha() and word.isascii() and len(word) >= 2 and word not in avoid:
            words.append(word)
    return words


# At most this many words: their text states are cached while the text encoders are frozen (about 60 MB for
# SD 1.5's 77 x 768 states), and a larger vocabulary (CLIP's 49,408 tokens) is sampled once, by a fixed seed.
POOL = 256


class NeighbourPrompts:
    """The prompts base-prediction preservation keeps: `class_prompt`, and `class_prompt` followed by each
    whole word of the vocabulary (up to POOL of them) but the trigger words (`avoid`) and the class prompt's
    own. A sample's prompt comes from a generator seeded by the sample's own seed, so a resumed run, and any
    number of processes, draw the same ones."""

    def __init__(self, class_prompt: str, tokenizer: Any, avoid: set[str] = frozenset(), pool: int = POOL) -> None:
        known = {w.lower() for w in class_prompt.split()} | {w.lower() for w in avoid}
        words = vocabulary_words(tokenizer, known)
        if len(words) > pool:
            words = sorted(random.Random(0).sample(words, pool), key=words.index)
        self.prompts = [class_prompt] + [f"{class_prompt} {w}" for w in words]

    def __call__(self, seeds: list[int]) -> list[str]:
        return [self.prompts[random.Random(s).randrange(len(self.prompts))] for s in seeds]
