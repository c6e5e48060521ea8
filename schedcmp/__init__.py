"""schedcmp: compare diffusion schedulers and step counts on one prompt, seed and model."""

__version__ = "0.1.0"
