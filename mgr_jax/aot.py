"""`python -m mgr_jax.aot`: compile a config's steps for TPU and GPU targets ahead of time
(mgr_jax/run/aot.py)."""
from mgr_jax.run import aot as command

if __name__ == "__main__":
    command.cli()
