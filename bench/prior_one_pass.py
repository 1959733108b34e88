"""DreamBooth with prior preservation: one UNet call on instance and class samples together (the recipe's
step, as diffusers' train_dreambooth_lora.py takes it) against two calls (instance batch, then class batch),
alternating in one process on the digits base (samples/digits_sd), LoRA rank 4 on the UNet attention.

Each step: the drawn inputs of both batches, the UNet forward, backward, clip and AdamW. The ratio is the
median over rounds of (one-call time / two-call time in the same round).

    python bench/prior_one_pass.py [--rounds 20] [--batch-size 1 2 4] [--threads 1] [--cpu-time]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from harness import interleaved, ratio  # noqa: E402

import vislora  # noqa: E402
from vislora.diffusion.buckets import bucket_sizes  # noqa: E402
from vislora.diffusion.captions import scan_captioned  # noqa: E402
from vislora.diffusion.latents import TextCache, cache_latents, load_items  # noqa: E402
from vislora.recipes import dreambooth_sd  # noqa: E402
from vislora.diffusion.bases import load_pipeline  # noqa: E402
from vislora.diffusion import denoise  # noqa: E402
from vislora.diffusion.batches import draw_seeds  # noqa: E402

BASE = Path(__file__).resolve().parents[1] / "samples" / "digits_sd"


def _folder(root: Path, name: str, count: int, size: int) -> Path:
    rng = np.random.default_rng(len(name))
    folder = root / name
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def steps(batch: int, root: Path) -> dict:
    """The two steps on one adapted UNet, each drawing the inputs of global batch n = 0, 1, 2, ..."""
    base = load_pipeline(str(BASE))
    size = base.pipe.unet.config.sample_size * base.pipe.vae_scale_factor
    torch.manual_seed(0)
    vislora.inject(base.pipe, {"unet.attn": {"rank": 4, "alpha": 4}})
    unet = base.pipe.unet.train()
    sizes = bucket_sizes(size, dreambooth_sd.multiple_of(base), square=True)
    sets = {k: load_items(scan_captioned(_folder(root / str(batch), k, 4, size), caption=c, warn=False), sizes)
            for k, c in (("instance", "a sks digit"), ("class", "a handwritten digit"))}
    cached = {k: cache_latents(base.pipe.vae, v, "cpu") for k, v in sets.items()}
    text = TextCache(base, True)
    alphas = torch.as_tensor(base.pipe.scheduler.alphas_cumprod, dtype=torch.float32)
    params = vislora.trainable_parameters(base.pipe)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    count = iter(range(10**9))

    def parts() -> list[denoise.UNetBatch]:
        n, picks = next(count), [i % 4 for i in range(batch)]
        return [denoise.training_batch(base, base.pipe.vae, text, sets[k], picks, cached[k],
                                       draw_seeds(0, n, first, batch), alphas, "cpu")
                for k, first in (("instance", 0), ("class", batch))]

    def finish(inst: torch.Tensor, prior: torch.Tensor) -> None:
        (inst.mean() + prior.mean()).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def one() -> None:
        both = parts()
        finish(*denoise.unet_losses(unet, denoise.cat(both), alphas, base.prediction).split([batch, batch]))

    def two() -> None:
        finish(*(denoise.unet_losses(unet, b, alphas, base.prediction) for b in parts()))

    return {"two calls": two, "one call": one}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--batch-size", type=int, nargs="+", default=[1, 4])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cpu-time", action="store_true", help="this process's CPU time (a shared machine)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    print(f"digits base, LoRA rank 4 on unet.attn, {args.threads} thread(s), {args.rounds} rounds, "
          f"{'CPU' if args.cpu_time else 'wall'} time")
    print(f"{'batch (each part)':>18} {'two calls (ms)':>15} {'one call (ms)':>14} {'one / two':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for batch in args.batch_size:
            times = interleaved(steps(batch, Path(tmp)), args.rounds, warmup=2, clock=clock)
            two, one = (1000 * statistics.median(times[k]) for k in ("two calls", "one call"))
            print(f"{batch:>18} {two:>15.1f} {one:>14.1f} {ratio(times, 'one call', 'two calls'):>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
