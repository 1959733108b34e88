"""What the studio tests load: a Stable Diffusion base folder and an adapter folder with good and bad files.

The base is the embedded digits pipeline (samples/digits_sd) when it is there; otherwise a tiny pipeline of
the same classes, built from configs (tests/sd_tiny.py) and saved as a diffusers folder.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import torch

DIGITS_SD = Path(__file__).resolve().parent.parent / "samples" / "digits_sd"


def tiny_sd_folder(root: Path, cross_dim: int = 24) -> Path:
    """A StableDiffusionPipeline folder: 2-level UNet and VAE (32 px images), 2-layer CLIP, DDIM."""
    from sd_tiny import build_pipeline

    folder = root / f"base{cross_dim}"
    build_pipeline(root, width=cross_dim).save_pretrained(folder, safe_serialization=True)
    return folder


def base_folder(root: Path) -> Path:
    return DIGITS_SD if (DIGITS_SD / "model_index.json").is_file() else tiny_sd_folder(root)


def style_adapter(pipe, path: Path, seed: int, *, targets: str = "unet.attn", rank: int = 4) -> Path:
    """A LoRA with random (non-zero) factors on the pipeline, saved to `path`, then taken off again."""
    import vislora

    torch.manual_seed(seed)
    vislora.inject(pipe, targets, rank=rank, alpha=rank, name="style", init="random")
    vislora.save_adapter(pipe, path, name="style")
    vislora.remove(pipe, "style")
    return path


def adapter_folder(root: Path, base: Path) -> Path:
    """bold and italic (random style LoRAs for this base), a corrupt file, a pickle, a file for another width."""
    from diffusers import DiffusionPipeline

    folder = root / "adapters"
    folder.mkdir(parents=True, exist_ok=True)
    pipe = DiffusionPipeline.from_pretrained(str(base), use_safetensors=True, torch_dtype=torch.float32)
    style_adapter(pipe, folder / "bold.safetensors", 1)
    style_adapter(pipe, folder / "italic.safetensors", 2, targets="unet.cross_attn", rank=2)
    (folder / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with open(folder / "pickled.pt", "wb") as f:
        pickle.dump({"lora_down": [0.0]}, f)
    # Same UNet layout, wider cross-attention (as SD2.x files are to SD1.x): the loader refuses it by shape.
    from conftest import tiny_unet

    other = SimpleNamespace(components={"unet": tiny_unet(cross_dim=pipe.unet.config.cross_attention_dim + 8)})
    style_adapter(other, folder / "other_width.safetensors", 3, targets="unet.cross_attn")
    return folder


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHROMIUM = Path("/usr/bin/chromium")
# Debian's Chromium, headless, with nothing that reaches the network on its own.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
