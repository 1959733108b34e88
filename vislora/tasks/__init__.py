"""Tasks built on the adapter core: diffusion pipelines (load, generate) and the like."""
