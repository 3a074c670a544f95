"""xaijax: explainable-AI (DeepLIFT) guided compression of neural networks in JAX."""

__version__ = "0.1.0"
