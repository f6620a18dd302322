"""Forwards to mgr_jax/configs/dtd.py, the file installed with the package."""
from mgr_jax.configs.dtd import *  # noqa: F401,F403
