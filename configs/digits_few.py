"""Forwards to mgr_jax/configs/digits_few.py, the file installed with the package."""
from mgr_jax.configs.digits_few import *  # noqa: F401,F403
