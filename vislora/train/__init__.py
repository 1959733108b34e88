"""What every training recipe shares: transactional checkpoints, trainer state (optimizer, RNG), the seeded
sampling order, and metrics (CSV/JSON, plots, peak memory)."""
