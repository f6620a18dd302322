"""Forwards to mgr_jax/configs/fashion_transfer.py, the file installed with the package."""
from mgr_jax.configs.fashion_transfer import *  # noqa: F401,F403
