"""What a task adds on top of the adapter core: the classifier's provenance and loading (`classifier`); diffusion
pipelines: `generate` (images with adapters mixed by strength).
"""
