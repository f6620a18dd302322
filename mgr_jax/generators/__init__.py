"""Generators behind one interface (see base.Generator), chosen by `config.generator.kind`."""
import importlib
import os

from converters import torch_pickle
from mgr_jax.errors import UserError
from mgr_jax.generators import tiny
from mgr_jax.generators.base import Generator

# kind -> module with `load(checkpoint, **kwargs) -> Generator`.
KINDS = {"stylegan2_ada": "mgr_jax.generators.stylegan2_ada",
         "biggan": "mgr_jax.generators.biggan",
         "fastgan": "mgr_jax.generators.fastgan",
         "edm": "mgr_jax.generators.edm"}


def load_generator(gen_config, num_classes) -> Generator:
    """Build the generator `gen_config` names.

    `gen_config.kwargs` (a dict, may be empty) goes to the kind's `load` as keyword arguments,
    e.g. {"num_steps": 2} for edm, {"kwargs_json": "G.json"} for biggan / stylegan2_ada.
    UserError (one line) for unknown kinds, missing files, a checkpoint that is not of `kind`
    or kwargs the loader does not take.
    """
    kind = gen_config.kind
    if kind == "random":
        return tiny.load(seed=gen_config.seed, num_classes=num_classes,
                         latent_dim=gen_config.latent_dim, resolution=gen_config.resolution)
    if kind not in KINDS:
        raise UserError(f"generator.kind={kind!r} is not known; choose one of "
                        f"{['random'] + sorted(KINDS)}")
    path = gen_config.checkpoint
    if not path or not os.path.exists(path):
        raise UserError(f"generator.checkpoint={path!r} does not exist; point it at a converted "
                        f"directory (python -m converters.{kind} IN OUT) or the original file")
    module = importlib.import_module(KINDS[kind])
    kwargs = gen_config.get("kwargs") or {}
    kwargs = kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs)
    try:
        gen = module.load(path, **kwargs)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise UserError(f"generator.kwargs={kwargs!r} does not fit generator.kind={kind}: "
                        f"{e} (see `load` in {KINDS[kind].replace('.', '/')}.py)") from e
    except (OSError, ValueError, NotImplementedError, torch_pickle.UnsafePickleError,
            torch_pickle.CheckpointFormatError) as e:
        # A checkpoint of another kind, a damaged file or settings that contradict it.
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"generator.checkpoint={path!r} could not be loaded as "
                        f"generator.kind={kind}: {first_line}") from e
    if gen.conditional and gen.num_classes != num_classes:
        raise UserError(f"generator {path} has {gen.num_classes} classes but the dataset has "
                        f"{num_classes}; use a generator trained on this dataset")
    return gen
