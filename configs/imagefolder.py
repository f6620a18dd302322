"""Forwards to mgr_jax/configs/imagefolder.py, the file installed with the package."""
from mgr_jax.configs.imagefolder import *  # noqa: F401,F403
