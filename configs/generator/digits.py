"""Forwards to mgr_jax/configs/generator/digits.py, the file installed with the package."""
from mgr_jax.configs.generator.digits import *  # noqa: F401,F403
