"""Diffusion pipelines: bases (UNet families), prompts, captions, buckets, latents, the training objective,
batches, drawing and `vislora generate`."""
