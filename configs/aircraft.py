"""Forwards to mgr_jax/configs/aircraft.py, the file installed with the package."""
from mgr_jax.configs.aircraft import *  # noqa: F401,F403
