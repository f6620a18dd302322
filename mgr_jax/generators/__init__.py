"""Generators behind one interface (see base.Generator), chosen by `config.generator.kind`."""
import importlib
import os

from mgr_jax.errors import UserError
from mgr_jax.generators.base import Generator

# kind -> module with `load(checkpoint, **kwargs) -> Generator`.
KINDS = {"stylegan2_ada": "mgr_jax.generators.stylegan2_ada",
         "biggan": "mgr_jax.generators.biggan",
         "fastgan": "mgr_jax.generators.fastgan",
         "edm": "mgr_jax.generators.edm"}


def load_generator(gen_config, num_classes) -> Generator:
    """Build the generator `gen_config` names; UserError for unknown kinds or missing files."""
    kind = gen_config.kind
    if kind == "random":
        from mgr_jax.generators import tiny  # noqa: PLC0415
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
    kwargs = dict(gen_config.get("kwargs", {}) or {})
    gen = module.load(path, **kwargs)
    if gen.conditional and gen.num_classes != num_classes:
        raise UserError(f"generator {path} has {gen.num_classes} classes but the dataset has "
                        f"{num_classes}; use a generator trained on this dataset")
    return gen
