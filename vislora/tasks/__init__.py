"""What a task adds on top of the adapter core: the classifier's provenance and loading (`classifier`);
Stable Diffusion pipelines: loading, architecture, prompt encoding, seeded drawing (`diffusion`); images with
adapters mixed by strength, and X/Y grids (`generate`)."""
