"""The configs: `get_config()` files, installed with the package (`python -m mgr_jax.main
--config=<this folder>/default.py`); the checkout's configs/ forwards here."""
