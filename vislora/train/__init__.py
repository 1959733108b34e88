"""What every training recipe shares: transactional checkpoints, trainer state (optimizer, RNG), the seeded
sampling order, metrics (CSV/JSON, plots, peak memory), the accelerator and schedule (`runs`), loss curves
and image grids (`plots`), and the denoising objective (`diffusion_loss`)."""
