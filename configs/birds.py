"""Forwards to mgr_jax/configs/birds.py, the file installed with the package."""
from mgr_jax.configs.birds import *  # noqa: F401,F403
