"""Forwards to mgr_jax/configs/cars.py, the file installed with the package."""
from mgr_jax.configs.cars import *  # noqa: F401,F403
