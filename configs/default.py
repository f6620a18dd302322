"""Forwards to mgr_jax/configs/default.py, the file installed with the package."""
from mgr_jax.configs.default import *  # noqa: F401,F403
