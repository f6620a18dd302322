"""The settings of the synthetic loss and of MPS, checked when made (SettingError), and what
they decide: the finder's optimiser, the classifier the finite-difference hypergradient runs.

`SyntheticSettings` and `MPSSettings` are what `methods.build_method` takes (exported by
`mgr_jax`); `mgr_jax.run.build.settings_from_config` reads them from a config.
"""
import dataclasses
import numbers
import warnings

import jax.numpy as jnp
import optax

from mgr_jax import hypergrad, synthetic_augment
from mgr_jax.errors import UserError
from mgr_jax.finder import ARCHS as FINDER_ARCHS

META_TARGETS = ("finder", "generator")
FINDER_UPDATES = ("meta", "max_ce", "max_pcr")
FINDER_OPTIMIZERS = ("adam", "sgd")
# The widest finder a run may ask for: a typo cannot ask for terabytes after the start.
MAX_HIDDEN_DIM = 65_536


class SettingError(UserError, ValueError):
    """A method name or setting that `build_method` / `build` cannot run."""


def require(ok, message):
    if not ok:
        raise SettingError(message)


def check_one_of(name, value, choices):
    require(isinstance(value, str) and value in choices,
             f"{name}={value!r} is not valid; choose one of {list(choices)}")


def check_number(name, value, low, *, strict=False, integer=False, high=None, high_open=False):
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool) and (
        value > low if strict else value >= low) and (
        high is None or (value < high if high_open else value <= high))
    bound = f"{'>' if strict else '>='} {low}" + (
        "" if high is None else f" and {'<' if high_open else '<='} {high}")
    require(ok, f"{name}={value!r} must be {'an integer' if integer else 'a number'} {bound}")


def check_flag(name, value):
    require(isinstance(value, bool), f"{name}={value!r} must be True or False")


@dataclasses.dataclass(frozen=True)
class SyntheticSettings:
    """The synthetic-sample loss of every method but base (config: lambda_,
    synthetic_batch_size, augment.num_ops / max_magnitude, uda.temperature / threshold)."""
    lambda_: float = 0.1  # the paper's lambda, weight of L_syn
    batch_size: int = 64  # synthetic samples per step
    augment_num_ops: int = 2  # RandAugment T: ops per sample ...
    augment_max_magnitude: float = 1.0  # ... and their largest magnitude (in [0, 1])
    uda_temperature: float = 0.4  # gda_ssl: sharpening temperature
    uda_threshold: float = 0.8  # gda_ssl: confidence threshold
    # The ops T draws from (synthetic_augment.OPS, all by default); a subset, e.g. without
    # posterize and solarize, makes T smooth in the image (library only, no config field).
    augment_ops: tuple = synthetic_augment.OPS

    def __post_init__(self):
        check_number("lambda_", self.lambda_, 0)
        check_number("synthetic batch_size", self.batch_size, 1, integer=True)
        check_number("augment_num_ops", self.augment_num_ops, 0, integer=True, high=16)
        check_number("augment_max_magnitude", self.augment_max_magnitude, 0, high=1)
        check_number("uda_temperature", self.uda_temperature, 0, strict=True)
        check_number("uda_threshold", self.uda_threshold, 0, high=1)
        ops = self.augment_ops
        require(isinstance(ops, (tuple, list)) and len(ops) > 0
                 and all(isinstance(o, str) and o in synthetic_augment.OPS for o in ops),
                 f"augment_ops={ops!r} must be a non-empty tuple of names from "
                 f"{list(synthetic_augment.OPS)}")
        object.__setattr__(self, "augment_ops", tuple(ops))


@dataclasses.dataclass(frozen=True)
class MPSSettings:
    """Meta-learning of the finder, Algorithm 1 (gda_mps, mgr; config: mps.*, finder.*)."""
    hypergradient: str = "exact"  # or "finite_difference" (DARTS Eq. 9)
    fd_eps: float = 0.01  # eps = fd_eps / ||v|| for finite_difference
    finder_lr: float = 1e-4  # the finder optimiser's learning rate (Adam's by default)
    kl_weight: float = 0.01  # lambda_KL of Eq. 11; 0 turns the KL penalty off
    meta_target: str = "finder"  # or "generator": meta-optimise G's own parameters
    finder_update: str = "meta"  # or the Table 7 ablations "max_ce" / "max_pcr"
    log_hypergrad_cosine: bool = False  # also compute the other hypergradient, log the cosine
    finder_arch: str = "residual"  # finder.ARCHS
    finder_hidden_dim: int = 0  # 0: the latent size
    # (after the fields above, so that positional calls keep their meaning)
    finder_optimizer: str = "adam"  # or "sgd" (plain gradient steps, no state)
    finder_b1: float = 0.9  # Adam's beta1 (the first moment's memory)
    finder_b2: float = 0.999  # Adam's beta2 (the second moment's memory)
    normalize_hypergrad: bool = False  # divide the hypergradient (with KL) by its global norm
    finder_warmup_steps: int = 0  # linear warm-up of finder_lr over this many finder updates
    update_every: int = 1  # the finder's meta-update every k-th step; PCR / GDA steps between
    log_meta_descent: bool = False  # re-evaluate the meta-objective after the update, log it

    def __post_init__(self):
        check_one_of("mps.hypergradient", self.hypergradient, hypergrad.HYPERGRADIENTS)
        check_number("mps.fd_eps", self.fd_eps, 0, strict=True)
        check_number("mps.finder_lr", self.finder_lr, 0, strict=True)
        check_one_of("mps.finder_optimizer", self.finder_optimizer, FINDER_OPTIMIZERS)
        check_number("mps.finder_b1", self.finder_b1, 0, high=1, high_open=True)
        check_number("mps.finder_b2", self.finder_b2, 0, high=1, high_open=True)
        check_flag("mps.normalize_hypergrad", self.normalize_hypergrad)
        check_number("mps.finder_warmup_steps", self.finder_warmup_steps, 0, integer=True)
        check_number("mps.update_every", self.update_every, 1, integer=True)
        check_flag("mps.log_meta_descent", self.log_meta_descent)
        check_number("mps.kl_weight", self.kl_weight, 0)
        check_one_of("mps.meta_target", self.meta_target, META_TARGETS)
        check_one_of("mps.finder_update", self.finder_update, FINDER_UPDATES)
        check_flag("mps.log_hypergrad_cosine", self.log_hypergrad_cosine)
        check_one_of("finder.arch", self.finder_arch, FINDER_ARCHS)
        check_number("finder.hidden_dim", self.finder_hidden_dim, 0, integer=True,
                     high=MAX_HIDDEN_DIM)

    @property
    def uses_finite_difference(self):
        return self.finder_update == "meta" and (self.hypergradient == "finite_difference"
                                                 or self.log_hypergrad_cosine)


def finder_optimizer(mps):
    """The optax optimiser of the finder (or of G, meta_target="generator"): the paper's
    Adam(finder_lr) unless the settings say otherwise. The warm-up counts finder updates:
    update n (from 0) uses finder_lr * min(1, (n + 1) / finder_warmup_steps)."""
    lr = mps.finder_lr
    if mps.finder_warmup_steps:
        warmup = mps.finder_warmup_steps
        lr = lambda count: mps.finder_lr * jnp.minimum(1.0, (count + 1.0) / warmup)  # noqa: E731
    if mps.finder_optimizer == "sgd":
        return optax.sgd(lr)
    return optax.adam(lr, b1=mps.finder_b1, b2=mps.finder_b2)


def check_generator(generator, num_classes):
    """SettingError unless `generator` is a Generator of this many classes (or none)."""
    require(generator is not None, "every method but base needs a generator: pass "
             "generator=... (mgr_jax.generators, e.g. stylegan2_ada.load(path))")
    for name in ("sample", "params", "latent_shape", "num_classes"):
        require(hasattr(generator, name), f"generator={type(generator).__name__} is not a "
                 "mgr_jax.generators.Generator (sample, params, latent_shape, num_classes)")
    require(not generator.num_classes or generator.num_classes == num_classes,
             f"the generator has {generator.num_classes} classes and num_classes={num_classes}"
             "; use a generator trained on this dataset's classes (or an unconditional one)")


def finite_difference_classifier(clf, mps, logits_shape, features_shape):
    """The classifier the finite-difference hypergradient evaluates L_syn with: a float32 twin
    when the classifier computes in a narrower dtype (theta +- eps v would be rounded away),
    or the classifier itself with a one-line warning when no twin can be made."""
    widths = [jnp.dtype(clf.compute_dtype).itemsize, jnp.dtype(logits_shape.dtype).itemsize,
              jnp.dtype(features_shape.dtype).itemsize]
    if not mps.uses_finite_difference or min(widths) >= 4:
        return clf
    twin = clf.in_float32()
    if twin is not None and twin is not clf:
        twin_logits, twin_features = twin.output_shapes()
        if min(jnp.dtype(twin_logits.dtype).itemsize,
               jnp.dtype(twin_features.dtype).itemsize) < 4:
            twin = None  # the module ignores its dtype field somewhere
    if twin is None or twin is clf:
        warnings.warn(f"mgr_jax: the finite-difference hypergradient runs the classifier in "
                      f"{jnp.dtype(clf.compute_dtype).name} (its module has no dtype field to "
                      "set to float32), so theta +- eps v is rounded: expect a noisy "
                      "hypergradient; use mps hypergradient='exact' or float32 compute",
                      stacklevel=3)
        return clf
    return twin
