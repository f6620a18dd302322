"""Forwards to mgr_jax/configs/fashion_mnist.py, the file installed with the package."""
from mgr_jax.configs.fashion_mnist import *  # noqa: F401,F403
