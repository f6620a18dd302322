"""Save and load a Flax variables pytree with a small JSON description beside it.

Layout of a variables directory (written by converters and the generator trainer):
    DIR/meta.json    what built the variables: {"kind": ..., "module_kwargs": {...}, ...}
    DIR/variables/   an orbax checkpoint of the variables pytree (numpy arrays)

Such a directory holds only arrays and JSON, so it is the safe form to share weights in: loading
it runs no code from it (unlike a pickle). `save_variables` replaces an existing directory only
when that directory is itself a variables directory; anything else is refused, never removed.
"""
import json
import os
import shutil
import tempfile

import jax
import numpy as np
import orbax.checkpoint as ocp

META_FILE = "meta.json"
VARIABLES_DIR = "variables"


def is_variables_dir(path):
    """Whether `path` is a directory as `save_variables` writes it: a meta.json holding a JSON
    object with a "kind", and a variables/ directory."""
    meta_path = os.path.join(path, META_FILE)
    if not (os.path.isdir(path) and os.path.isfile(meta_path)
            and os.path.isdir(os.path.join(path, VARIABLES_DIR))):
        return False
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "kind" in meta


def save_variables(directory, variables, meta):
    """Write `variables` and `meta` to `directory` atomically (a temp dir, then rename).

    An existing `directory` must be a variables directory (`is_variables_dir`; else
    FileExistsError, and it is left as it is); it is moved aside and removed only once the new
    one is in place.
    """
    directory = os.path.abspath(directory)
    if os.path.lexists(directory) and (os.path.islink(directory)
                                       or not is_variables_dir(directory)):
        raise FileExistsError(f"{directory} exists and is not a variables directory (meta.json "
                              "and variables/); not replacing it")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp_vars_", dir=parent)
    try:
        staged = os.path.join(tmp, "new")
        os.mkdir(staged)
        host = jax.tree.map(np.asarray, variables)
        ocp.PyTreeCheckpointer().save(os.path.join(staged, VARIABLES_DIR), host)
        with open(os.path.join(staged, META_FILE), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        if os.path.lexists(directory):
            os.rename(directory, os.path.join(tmp, "old"))
        os.rename(staged, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_variables(directory):
    """Return (variables, meta) saved by `save_variables`; a clear error if it is not one."""
    directory = os.path.abspath(directory)
    meta_path = os.path.join(directory, META_FILE)
    if not os.path.isfile(meta_path) or not os.path.isdir(os.path.join(directory, VARIABLES_DIR)):
        raise FileNotFoundError(
            f"{directory} is not a variables directory (expected meta.json and variables/ in it); "
            "make one with a converter, e.g. `python -m converters.torchvision_resnet in.pth OUT`")
    with open(meta_path) as f:
        meta = json.load(f)
    variables = ocp.PyTreeCheckpointer().restore(os.path.join(directory, VARIABLES_DIR))
    return variables, meta
