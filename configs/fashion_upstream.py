"""Forwards to mgr_jax/configs/fashion_upstream.py, the file installed with the package."""
from mgr_jax.configs.fashion_upstream import *  # noqa: F401,F403
