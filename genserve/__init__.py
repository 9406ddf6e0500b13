"""genserve: train deep generative models and serve them."""

__version__ = "0.1.0"
