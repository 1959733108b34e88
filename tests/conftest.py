"""Tiny models built from configs (nothing is downloaded), shared by the tests: each built once and handed
out as deep copies (`sd_models.fresh`)."""

from __future__ import annotations

import hashlib
import os
import warnings

import pytest
import torch

from sd_models import fresh

warnings.filterwarnings("ignore", category=FutureWarning)
if os.environ.get("PYTEST_XDIST_WORKER"):  # one worker per core (make test): a second thread would wait on the other
    torch.set_num_threads(1)


@fresh
def tiny_vit(num_classes: int = 10, **kw) -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    args = dict(pretrained=False, img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                num_classes=num_classes)
    args.update(kw)
    return timm.create_model(kw.pop("name", "vit_tiny_patch16_224"), **args).eval()


@fresh
def tiny_unet(cross_dim: int = 24) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_dim, norm_num_groups=8, attention_head_dim=8,
    ).eval()


@fresh
def tiny_clip(hidden: int = 24) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(hidden_size=hidden, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                            vocab_size=99, max_position_embeddings=16, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return CLIPTextModel(config).eval()


@fresh
def tiny_pipeline(cross_dim: int = 24):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[16, 32], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        norm_num_groups=8)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=tiny_clip(cross_dim), tokenizer=None, unet=tiny_unet(cross_dim),
        scheduler=DDIMScheduler(steps_offset=1, clip_sample=False), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def unet_inputs(batch: int = 2, cross_dim: int = 24, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(batch, 4, 16, 16, generator=g),
        "timestep": torch.tensor([10, 500][:batch] * (batch // 2 or 1))[:batch],
        "encoder_hidden_states": torch.randn(batch, 7, cross_dim, generator=g),
    }


def run_unet(unet, inputs) -> torch.Tensor:
    with torch.no_grad():
        return unet(**inputs).sample


def images(batch: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def tokens(batch: int = 2, length: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 99, (batch, length), generator=torch.Generator().manual_seed(seed))


def checksum(module: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer, by name: equal iff the state is bit-identical."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.fixture
def vit():
    return tiny_vit()


@pytest.fixture
def unet():
    return tiny_unet()


@pytest.fixture
def clip():
    return tiny_clip()


# How many cases the property-based reader tests ran (tests/test_fuzz_readers.py), printed after the session.
FUZZ_COUNTS: dict[str, int] = {}


def pytest_terminal_summary(terminalreporter):
    if FUZZ_COUNTS:
        terminalreporter.write_sep("-", "property-based reader cases")
        for what, count in FUZZ_COUNTS.items():
            terminalreporter.write_line(f"{count:>7,} {what}")
