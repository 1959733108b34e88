"""The peer of the quality scorecard: LoRA DreamBooth trained the way diffusers' example
`examples/dreambooth/train_dreambooth_lora.py` trains it, with that script's defaults, on peft + diffusers only.

    python bench/peer_dreambooth.py --model samples/digits_sd --instance-data DIR --instance-prompt "a sks digit" \
        [--with-prior-preservation --class-prompt "a handwritten digit" --class-data DIR] --out DIR

What is the example's (read from its source): PEFT LoRA rank 4, alpha 4, gaussian init, on to_q, to_k, to_v,
to_out.0 (and add_k_proj, add_v_proj where a UNet has them); AdamW lr 5e-4, betas (0.9, 0.999), weight decay
1e-2, eps 1e-8; batch 4; a constant learning rate (its 500 warm-up steps do not apply to "constant"); gradient
norm clipped at 1; one epoch, so the steps come from the data: ceil(len(dataset) / 4), where the dataset is as
long as max(instance images, class images) with prior preservation; 100 class images drawn by the base at the
pipeline's own defaults; epsilon / v targets from a DDPMScheduler made from the base's schedule, plain MSE,
instance and class pictures in one batch, prior loss weight 1. Random crop after a resize to the resolution.

What differs, and why: the resolution is the base's own (the example's 512 does not fit a 32 px base); a seed
(0) is set so the scorecard is reproducible (the example's default is none); and a folder whose images carry
.txt captions trains on those captions when --instance-prompt is not given (the style tasks; the example takes
one prompt for all images). Writes OUT/pytorch_lora_weights.safetensors (diffusers' LoRA file) and
OUT/metrics.json (steps, seconds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--instance-data", required=True)
    p.add_argument("--instance-prompt", help="one prompt for all images (default: each image's .txt caption)")
    p.add_argument("--with-prior-preservation", action="store_true")
    p.add_argument("--class-prompt")
    p.add_argument("--class-data")
    p.add_argument("--num-class-images", type=int, default=100)
    p.add_argument("--prior-loss-weight", type=float, default=1.0)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--sample-batch-size", type=int, default=4)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, help="overrides --epochs")
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def draw_class_images(args: argparse.Namespace) -> None:
    """Top the class folder up to --num-class-images with the base's own drawings (its default settings)."""
    from diffusers import DiffusionPipeline

    folder = Path(args.class_data)
    folder.mkdir(parents=True, exist_ok=True)
    have = len(images_in(folder))
    if have >= args.num_class_images:
        return
    pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    for start in range(have, args.num_class_images, args.sample_batch_size):
        count = min(args.sample_batch_size, args.num_class_images - start)
        for i, image in enumerate(pipe([args.class_prompt] * count).images):
            digest = hashlib.sha1(image.tobytes()).hexdigest()
            image.save(folder / f"{start + i}-{digest}.jpg")


class DreamBoothData(torch.utils.data.Dataset):
    """Instance pictures with their prompt, and (with prior preservation) class pictures with theirs; as long
    as the longer of the two, each cycled."""

    def __init__(self, args: argparse.Namespace, size: int):
        folder = Path(args.instance_data)
        self.instances = images_in(folder)
        self.prompts = [args.instance_prompt or p.with_suffix(".txt").read_text().strip() for p in self.instances]
        self.classes = images_in(Path(args.class_data))[:args.num_class_images] if args.with_prior_preservation \
            else []
        self.class_prompt = args.class_prompt
        self.transform = transforms.Compose([
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.RandomCrop(size), transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])

    def __len__(self) -> int:
        return max(len(self.instances), len(self.classes))

    def __getitem__(self, i: int) -> dict:
        item = {"pixels": self.transform(Image.open(self.instances[i % len(self.instances)]).convert("RGB")),
                "prompt": self.prompts[i % len(self.instances)]}
        if self.classes:
            item["class_pixels"] = self.transform(Image.open(self.classes[i % len(self.classes)]).convert("RGB"))
        return item


def collate(items: list[dict]) -> dict:
    """Instance pictures first, then the class pictures, in one batch (one UNet call, as the example)."""
    pixels = [it["pixels"] for it in items] + [it["class_pixels"] for it in items if "class_pixels" in it]
    prompts = [it["prompt"] for it in items] + [None for it in items if "class_pixels" in it]
    return {"pixels": torch.stack(pixels), "prompts": prompts}


def train(args: argparse.Namespace) -> dict:
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel, CLIPTokenizer

    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.with_prior_preservation:
        draw_class_images(args)
    drawn = time.perf_counter()
    dtype = torch.float32
    tokenizer = CLIPTokenizer.from_pretrained(args.model, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(args.model, subfolder="text_encoder", torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(args.model, subfolder="vae", torch_dtype=dtype)
    unet = UNet2DConditionModel.from_pretrained(args.model, subfolder="unet", torch_dtype=dtype)
    noise_scheduler = DDPMScheduler.from_pretrained(args.model, subfolder="scheduler")
    for module in (vae, text_encoder, unet):
        module.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_v_proj"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)

    size = unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    data = DreamBoothData(args, size)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True, collate_fn=collate)
    steps = args.max_steps or args.epochs * len(loader)  # len(loader) = ceil(len(data) / batch)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=500, num_training_steps=steps)

    def encode(prompts: list[str | None]) -> torch.Tensor:
        texts = [p if p is not None else args.class_prompt for p in prompts]
        ids = tokenizer(texts, truncation=True, padding="max_length", max_length=tokenizer.model_max_length,
                        return_tensors="pt").input_ids
        return text_encoder(ids, return_dict=False)[0]

    unet.train()
    step, losses = 0, []
    while step < steps:
        for batch in loader:
            latents = vae.encode(batch["pixels"]).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(latents),)).long()
            noisy = noise_scheduler.add_noise(latents, noise, t)
            prediction = unet(noisy, t, encode(batch["prompts"]), return_dict=False)[0]
            target = noise if noise_scheduler.config.prediction_type == "epsilon" else \
                noise_scheduler.get_velocity(latents, noise, t)
            if args.with_prior_preservation:
                prediction, prediction_prior = torch.chunk(prediction, 2, dim=0)
                target, target_prior = torch.chunk(target, 2, dim=0)
                loss = F.mse_loss(prediction.float(), target.float()) + \
                    args.prior_loss_weight * F.mse_loss(prediction_prior.float(), target_prior.float())
            else:
                loss = F.mse_loss(prediction.float(), target.float())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            step += 1
            if step >= steps:
                break

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(save_directory=str(out), unet_lora_layers=layers)
    metrics = {"steps": steps, "images": len(data.instances), "class_images": len(data.classes),
               "dataset_length": len(data), "first_loss": losses[0], "last_loss": losses[-1],
               "class_images_s": drawn - started, "total_s": time.perf_counter() - started}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.with_prior_preservation and not (args.class_prompt and args.class_data):
        print("error: --with-prior-preservation needs --class-prompt and --class-data", file=sys.stderr)
        return 2
    metrics = train(args)
    print(f"peer: {metrics['steps']} steps, {metrics['total_s']:.1f} s -> {args.out}/pytorch_lora_weights.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
