"""Forwards to mgr_jax/configs/pets.py, the file installed with the package."""
from mgr_jax.configs.pets import *  # noqa: F401,F403
