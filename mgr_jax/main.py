"""`python -m mgr_jax.main`: the classifier's training command (mgr_jax/run/main.py)."""
from mgr_jax.run import main as command

if __name__ == "__main__":
    command.cli()
