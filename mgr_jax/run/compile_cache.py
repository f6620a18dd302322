"""JAX's persistent compilation cache for the command-line entry points.

Compiled XLA programs are stored on disk, keyed by the program and the compiler options, so a
resumed run or the next seed of a sweep (same shapes, same config apart from the seed) starts
training without compiling again. The folder is, in order: the `--compilation_cache` flag, the
environment variable MGR_JAX_COMPILATION_CACHE, or ~/.cache/mgr_jax/xla; "off" turns it off.
Entries are only a cache: deleting the folder at any time is safe.
"""
import os

import jax

ENV_VAR = "MGR_JAX_COMPILATION_CACHE"
DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "mgr_jax", "xla")
# Programs that compile faster than this are not worth a disk entry.
MIN_COMPILE_SECONDS = 1.0


def cache_dir(flag_value=None):
    """The folder to use, or None when the cache is turned off."""
    value = flag_value if flag_value is not None else os.environ.get(ENV_VAR, DEFAULT_DIR)
    return None if value.strip().lower() in ("", "off", "none") else os.path.expanduser(value)


def enable(flag_value=None, min_compile_seconds=MIN_COMPILE_SECONDS):
    """Point JAX's persistent cache at `cache_dir(flag_value)`; returns that folder (or None).

    A folder that cannot be created leaves the cache off (a cache must never stop a run).
    """
    directory = cache_dir(flag_value)
    if directory is None:
        return None
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
