"""Save and load a Flax variables pytree with a small JSON description beside it.

Layout of a variables directory (written by converters and the generator trainer):
    DIR/meta.json    what built the variables: {"kind": ..., "module_kwargs": {...}, ...}
    DIR/variables/   an orbax checkpoint of the variables pytree (numpy arrays)
"""
import json
import os
import shutil
import tempfile

import jax
import numpy as np
import orbax.checkpoint as ocp


def save_variables(directory, variables, meta):
    """Write `variables` and `meta` to `directory` atomically (a temp dir, then rename)."""
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp_vars_", dir=parent)
    try:
        host = jax.tree.map(np.asarray, variables)
        ocp.PyTreeCheckpointer().save(os.path.join(tmp, "variables"), host)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        if os.path.exists(directory):
            shutil.rmtree(directory)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_variables(directory):
    """Return (variables, meta) saved by `save_variables`; a clear error if it is not one."""
    directory = os.path.abspath(directory)
    meta_path = os.path.join(directory, "meta.json")
    if not os.path.isfile(meta_path) or not os.path.isdir(os.path.join(directory, "variables")):
        raise FileNotFoundError(
            f"{directory} is not a variables directory (expected meta.json and variables/ in it); "
            "make one with a converter, e.g. `python -m converters.torchvision_resnet in.pth OUT`")
    with open(meta_path) as f:
        meta = json.load(f)
    variables = ocp.PyTreeCheckpointer().restore(os.path.join(directory, "variables"))
    return variables, meta
