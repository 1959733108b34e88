"""What a task adds on top of the adapter core: the classifier's provenance and loading (`classifier`);
the diffusion pipeline helpers join here."""
