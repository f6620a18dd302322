"""Forwards to mgr_jax/configs/paper.py, the file installed with the package."""
from mgr_jax.configs.paper import *  # noqa: F401,F403
