"""Old path of the generator trainer, kept for one release: use `python -m mgr_jax.gan.train`."""
from mgr_jax.gan.train import run

if __name__ == "__main__":
    run()
