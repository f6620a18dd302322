"""Start the classifier from converted weights (`model.init_checkpoint`), checked against it."""
import os

import jax
import jax.numpy as jnp
import numpy as np

from mgr_jax.errors import UserError
from mgr_jax.variables_io import load_variables


def _flat(tree):
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def shape_mismatches(expected, loaded, skip_prefixes=()):
    """Lines describing missing, unexpected and wrongly shaped leaves of two variable trees."""
    want, got = _flat(expected), _flat(loaded)
    keep = lambda k: not any(k.startswith(p) for p in skip_prefixes)  # noqa: E731
    missing = [k for k in want if k not in got and keep(k)]
    unexpected = [k for k in got if k not in want and keep(k)]
    shapes = [f"{k} {tuple(np.shape(got[k]))} != {tuple(want[k].shape)}"
              for k in want if k in got and keep(k) and tuple(np.shape(got[k])) != tuple(
                  want[k].shape)]
    out = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            more = f" (+{len(items) - 4} more)" if len(items) > 4 else ""
            out.append(f"{label}: {', '.join(items[:4])}{more}")
    return out


_CONVERT = "`python -m converters.torchvision_resnet IN.pth OUT_DIR`"


def check_init_checkpoint_path(path):
    """UserError (one line) unless `path` is a converted weights directory."""
    if not os.path.exists(path):
        raise UserError(f"model.init_checkpoint={path!r} does not exist; convert torchvision "
                        f"weights with {_CONVERT} and point model.init_checkpoint at OUT_DIR")
    if not os.path.isdir(path):
        raise UserError(f"model.init_checkpoint={path!r} is a file, not a converted weights "
                        f"directory; if it is a torchvision .pth, convert it with {_CONVERT} "
                        "and point model.init_checkpoint at OUT_DIR")
    if not (os.path.isfile(os.path.join(path, "meta.json"))
            and os.path.isdir(os.path.join(path, "variables"))):
        raise UserError(f"model.init_checkpoint={path!r} is a folder without meta.json and "
                        f"variables/, not converted weights; make them with {_CONVERT}")


def non_finite_leaves(tree):
    """Paths ("params/fc/kernel") of the floating-point arrays of `tree` that hold NaN or inf."""
    bad = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        value = np.asarray(leaf)
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            bad.append("/".join(str(getattr(k, "key", k)) for k in path))
    return bad


def load_init_checkpoint(config, model, num_classes):
    """Variables to start from, or None for a random init; UserError if they do not fit.

    The classifier head (`fc`) is replaced by a fresh one for this task when the checkpoint's
    has another number of classes (ImageNet's 1000), as fine-tuning in the paper does, and with
    `model.fresh_head` (the default) also when its shape matches: a checkpoint pretrained on
    another task (`python -m mgr_jax.run.export`) has another task's head even with as many
    classes. `model.fresh_head=False` keeps a same-shaped head. Everything else must match the
    config's architecture exactly.
    """
    path = config.model.init_checkpoint
    if not path:
        return None
    check_init_checkpoint_path(path)
    try:
        loaded, meta = load_variables(path)
    except Exception as e:  # noqa: BLE001 (orbax / json raise many kinds on a damaged folder)
        why = " ".join(str(e).split())[:160] or type(e).__name__
        raise UserError(f"model.init_checkpoint={path!r} could not be read ({why}); convert "
                        f"the weights again with {_CONVERT}") from None
    if not (isinstance(loaded, dict) and {"params", "batch_stats"} <= set(loaded)):
        raise UserError(f"model.init_checkpoint={path!r} holds no classifier (params and "
                        f"batch_stats; kind {meta.get('kind', '?')!r}); convert torchvision "
                        f"weights with {_CONVERT}")
    size = config.data.image_size
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                 jnp.zeros((1, size, size, 3)), train=False))
    head_differs = tuple(np.shape(loaded["params"].get("fc", {}).get("kernel", ()))) != tuple(
        expected["params"]["fc"]["kernel"].shape)
    problems = shape_mismatches(expected, loaded,
                                skip_prefixes=("params/fc",) if head_differs else ())
    if problems:
        raise UserError(f"model.init_checkpoint={path} ({meta.get('arch', '?')}) does not fit "
                        f"model.arch={config.model.arch} width={config.model.width} "
                        f"cifar_stem={config.model.cifar_stem}: " + "; ".join(problems))
    bad = non_finite_leaves(loaded)
    if bad:
        raise UserError(f"model.init_checkpoint={path} holds NaN or infinite values in {bad[0]}"
                        f"{f' (and {len(bad) - 1} more arrays)' if len(bad) > 1 else ''}; it "
                        "cannot start a run: convert the weights again from a good file")
    variables = {"params": dict(loaded["params"]), "batch_stats": loaded["batch_stats"]}
    if head_differs or config.model.get("fresh_head", True):
        fresh = model.init(jax.random.fold_in(jax.random.key(config.seed), 1),
                           jnp.zeros((1, size, size, 3)), train=False)
        variables["params"]["fc"] = fresh["params"]["fc"]
        why = (f"the checkpoint's head has {np.shape(loaded['params']['fc']['kernel'])[-1]} "
               "classes" if head_differs else "model.fresh_head")
        print(f"init_checkpoint {path}: new {num_classes}-way fc layer ({why})", flush=True)
    return jax.tree.map(jnp.asarray, variables)
