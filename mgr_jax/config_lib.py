"""Config checks: each bad value is one UserError line saying what is wrong and how to fix it."""
import json

from mgr_jax.errors import UserError
from mgr_jax.hypergrad import HYPERGRADIENTS

METHODS = ("base", "gda", "gda_mh", "gda_ssl", "gda_mps", "pcr", "mgr")
AUGMENTS = ("none", "randaugment", "trivialaugment", "augmix")
DTYPES = ("float32", "bfloat16")


def to_dict(config):
    """The config as plain JSON-able dicts (tuples become lists)."""
    return json.loads(config.to_json())


def _require(ok, message):
    if not ok:
        raise UserError(message)


def _choice(value, name, choices):
    _require(value in choices, f"{name}={value!r} is not valid; choose one of {list(choices)}")


def validate(config):
    """Raise UserError for the first bad value found in `config`."""
    _choice(config.method, "method", METHODS)
    _require(config.num_epochs >= 1, f"num_epochs={config.num_epochs} must be at least 1")
    for name in ("batch_size", "eval_batch_size", "synthetic_batch_size", "log_every_steps"):
        value = config.get(name)
        _require(value is None or value >= 1, f"{name}={value} must be a positive integer")
    opt = config.optimizer
    _require(opt.lr > 0, f"optimizer.lr={opt.lr} must be positive")
    _require(0 <= opt.momentum < 1, f"optimizer.momentum={opt.momentum} must be in [0, 1)")
    _require(list(opt.lr_milestones) == sorted(opt.lr_milestones),
             f"optimizer.lr_milestones={tuple(opt.lr_milestones)} must be increasing epochs")
    data = config.data
    _require(0 < data.subset_fraction <= 1,
             f"data.subset_fraction={data.subset_fraction} must be in (0, 1] (1.0 = all of D)")
    _require(0 < data.val_fraction < 1, f"data.val_fraction={data.val_fraction} must be in (0, 1)")
    _require(data.image_size >= 8, f"data.image_size={data.image_size} must be at least 8")
    _choice(data.augment, "data.augment", AUGMENTS)
    _choice(config.model.dtype, "model.dtype", DTYPES)
    _require(config.model.width > 0, f"model.width={config.model.width} must be positive")
    _require(config.lambda_ >= 0, f"lambda_={config.lambda_} must be non-negative")
    if "finder" in config:
        _choice(config.finder.arch, "finder.arch", ("residual", "residual_shallow", "linear",
                                                    "mlp"))
    if "mps" in config:
        _choice(config.mps.meta_target, "mps.meta_target", ("finder", "generator"))
        _choice(config.mps.finder_update, "mps.finder_update", ("meta", "max_ce", "max_pcr"))
        _choice(config.mps.hypergradient, "mps.hypergradient", HYPERGRADIENTS)
        _require(config.mps.fd_eps > 0, f"mps.fd_eps={config.mps.fd_eps} must be positive")
    if config.method != "base" and "generator" in config:
        _require(bool(config.generator.kind),
                 f"method={config.method} needs a generator: set generator.kind and "
                 "generator.checkpoint (see README, 'Generators')")
        kwargs = config.generator.get("kwargs") or {}
        _require(not kwargs or config.generator.kind != "random",
                 f"generator.kwargs={dict(kwargs)!r} is for loading a checkpoint; the random "
                 "kind takes generator.seed / latent_dim / resolution instead")
