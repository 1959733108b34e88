"""Training data: image decoding (`images`), class folders and CSV lists (`folders`), datasets and
transforms (`dataset`); for diffusion, captioned folders (`captions`), aspect-ratio buckets (`buckets`) and
the latent and prompt caches (`latents`)."""
