"""Forwards to mgr_jax/configs/flowers.py, the file installed with the package."""
from mgr_jax.configs.flowers import *  # noqa: F401,F403
