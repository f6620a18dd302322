"""Forwards to mgr_jax/configs/, the files installed with the package."""
