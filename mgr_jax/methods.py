"""The methods as train steps `train_step(state, batch, rng, frozen) -> (state, metrics)`.

A method is base (CE on the real batch), or a registered regulariser (`mgr_jax.regularisers`:
the paper's gda, gda_mh, gda_ssl, pcr, or one of yours) with latents drawn uniformly or by MPS
(Algorithm 1). `build_method(name, model=..., tx=..., learning_rate_fn=..., num_classes=...,
generator=..., synthetic=SyntheticSettings(...), mps=MPSSettings(...))` builds one from
explicit arguments, with any classifier that follows `mgr_jax.contract`; a config becomes these
arguments in `mgr_jax.run.build`. Each family has its builder and its context:
`_uniform_method` (UniformContext) and `_mps_method` (MPSContext, which holds a UniformContext).
Bad names and settings raise `SettingError` (a ValueError) when the method is built.

The step takes a TrainState (`classifier.create_train_state(..., meta=method.init_meta(key))`),
a batch {"image": (N, H, W, C) normalised by the classifier's `normalize`, "label": (N,) int}
(plus "val_image", "val_label", a D_val batch, when `method.needs_val`), a PRNG key (the step
folds in state.step, so the same key can be passed every step) and `method.frozen`. `frozen`
holds parameters the step reads but never changes (the generator's, unless the generator itself
is meta-optimised); passing them as an argument keeps them out of the compiled program's
constants. Jit it as `jax.jit(method.train_step)`, optionally with `donate_argnums=(0,)`.
Algorithm 1 (MPS) is `mgr_jax.mps.mps_step` (its three steps `meta_gradient`, `update_finder`,
`real_step`); the uniform-sampling methods share `mgr_jax.uniform_steps.uniform_step`. With
`mps.update_every=k > 1` the finder takes its meta-update at every k-th step only:
`method.step_for(n)` is `train_step` (the meta step) when n % k == 0 and `between_step` (the
method's uniform step on latents F_phi(z), meta state unchanged) otherwise; `method.jit()` jits
both, each a program of its own.
"""
import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from mgr_jax import contract, regularisers
from mgr_jax.finder import Finder
from mgr_jax.method_settings import (  # noqa: F401 (SettingError: what build_method raises)
    MPSSettings,
    SettingError,
    SyntheticSettings,
    check_generator,
    check_number,
    check_one_of,
    finder_optimizer,
    finite_difference_classifier,
    require,
)
from mgr_jax.mps import MPSContext, between_step, mps_step
from mgr_jax.uniform_steps import UniformContext, base_step, uniform_step


def method_names():
    """base and every registered regulariser's methods (`mgr_jax.regularisers`)."""
    return ("base",) + tuple(regularisers.method_table())


# The paper's seven (SPEC "Methods"); `method_names()` adds any registered from outside.
METHODS = method_names()


@dataclasses.dataclass(frozen=True)
class Method:
    """A method's pieces: its step, its extra state (TrainState.meta), its data needs."""
    train_step: Callable  # (state, batch, rng, frozen) -> (state, metrics); MPS: the meta step
    init_meta: Callable  # rng -> pytree stored in TrainState.meta
    frozen: Any = dataclasses.field(default_factory=dict)
    needs_val: bool = False  # whether batches carry a D_val batch (MPS)
    classifier: Any = None  # the contract.Classifier the step runs
    name: str = ""
    between_step: Callable = None  # mps.update_every > 1: the steps between meta-updates
    update_every: int = 1

    def with_frozen(self, frozen):
        return dataclasses.replace(self, frozen=frozen)

    def step_for(self, step_number):
        """The step to run at `step_number` (a host int, e.g. the loop's count): train_step
        at every update_every-th step, between_step at the others."""
        if self.between_step is None or step_number % self.update_every == 0:
            return self.train_step
        return self.between_step

    def jit(self, **jit_kwargs):
        """This Method with its steps jitted (`jax.jit(step, **jit_kwargs)`), one program each."""
        between = None if self.between_step is None else jax.jit(self.between_step, **jit_kwargs)
        return dataclasses.replace(self, train_step=jax.jit(self.train_step, **jit_kwargs),
                                   between_step=between)


def _with_step_key(step_fn, clf, needs_val):
    """Give each step its own key: fold the step number into the loop's key (inside jit).
    The batch is checked against the contract when the step is traced."""
    def wrapped(state, batch, rng, frozen):
        contract.check_batch(batch, clf, needs_val)
        return step_fn(state, batch, jax.random.fold_in(rng, state.step), frozen)
    return wrapped


def build_method(method, *, model, tx, learning_rate_fn, num_classes, generator=None,
                 synthetic=None, mps=None, regulariser_settings=None, image_size=None,
                 data_sharding=None):
    """A method's Method from explicit arguments.

    method: one of `method_names()`. model: a `contract.Classifier` (or a bare module
    following the contract, with image_size). tx: the classifier's optax optimiser (also the
    extra head's, gda_mh); learning_rate_fn: step -> lr, the eta of MPS's virtual step.
    generator: a `generators.Generator` (every method but base). synthetic:
    SyntheticSettings; mps: MPSSettings (the MPS methods, e.g. gda_mps, mgr);
    regulariser_settings: the method's regulariser's own settings (default: those it was
    registered with). Everything is checked here (SettingError, ContractError); nothing is
    compiled.
    """
    check_one_of("method", method, method_names())
    synthetic = SyntheticSettings() if synthetic is None else synthetic
    mps = MPSSettings() if mps is None else mps
    require(isinstance(synthetic, SyntheticSettings),
            f"synthetic={synthetic!r} must be a methods.SyntheticSettings")
    require(isinstance(mps, MPSSettings), f"mps={mps!r} must be a methods.MPSSettings")
    check_number("num_classes", num_classes, 1, integer=True)
    require(callable(learning_rate_fn), "learning_rate_fn must be a function step -> lr")
    require(callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None)),
            f"tx={tx!r} must be an optax GradientTransformation")
    clf = contract.as_classifier(model, image_size)
    if clf.input_shape is None:
        raise contract.ContractError("build_method needs the classifier's input shape: "
                                     "Classifier(module, input_shape=(H, W, C)) or image_size")
    shapes = clf.output_shapes()
    if shapes[0].shape[-1] != num_classes:
        raise contract.ContractError(f"the classifier has {shapes[0].shape[-1]} logits and "
                                     f"num_classes={num_classes}")
    if method == "base":
        step = functools.partial(base_step, model=clf, tx=tx, learning_rate_fn=learning_rate_fn)
        return Method(_with_step_key(step, clf, False), init_meta=lambda rng: {},
                      classifier=clf, name=method)
    check_generator(generator, num_classes)
    regulariser, sampling = regularisers.method_table()[method]
    ctx = UniformContext(model=clf, tx=tx, learning_rate_fn=learning_rate_fn,
                         generator=generator, regulariser=regulariser, synthetic=synthetic,
                         num_classes=num_classes, data_sharding=data_sharding,
                         settings=regulariser.settings if regulariser_settings is None
                         else regulariser_settings)
    if sampling == "uniform":
        return _uniform_method(method, ctx, shapes[1].shape[-1])
    return _mps_method(method, ctx, mps, shapes)


def _uniform_method(name, ctx, feature_dim):
    """A uniform-sampling method; a regulariser's extra head lives in TrainState.meta."""
    if ctx.regulariser.head is not None:  # it reads g(x): its input size from the features.
        ctx = dataclasses.replace(ctx, head=ctx.regulariser.head(ctx.num_classes))

    def init_meta(rng):
        if ctx.head is None:
            return {}
        head = jax.jit(ctx.head.init)(rng, jnp.zeros((1, feature_dim)))
        return {"aux_head": head, "aux_opt": ctx.tx.init(head)}
    step = _with_step_key(functools.partial(uniform_step, ctx=ctx), ctx.model, False)
    return Method(step, init_meta, {"generator": ctx.generator.params}, classifier=ctx.model,
                  name=name)


def _mps_method(name, uniform, mps, shapes):
    """An MPS method: Algorithm 1 (`mps_step`), with `between_step` when update_every > 1."""
    clf, generator = uniform.model, uniform.generator
    if mps.meta_target == "finder" and mps.kl_weight:
        require(uniform.synthetic.batch_size >= 2,
                f"synthetic batch_size={uniform.synthetic.batch_size}: the KL penalty needs at "
                "least two samples (or mps.kl_weight=0)")
    require(uniform.regulariser.head is None,
            f"{uniform.regulariser.name} has an extra head, which MPS does not train")
    finder = Finder(arch=mps.finder_arch, hidden_dim=mps.finder_hidden_dim)
    finder_loss = None
    if mps.finder_update != "meta":  # Table 7: CE (as GDA's) or PCR on x_p, whatever L_syn is.
        own = regularisers.registered()[{"max_ce": "gda", "max_pcr": "pcr"}[mps.finder_update]]
        other = dataclasses.replace(uniform, regulariser=own, settings=own.settings)
        finder_loss = other.syn_loss
    ctx = MPSContext(uniform=uniform, mps=mps, finder=finder, meta_tx=finder_optimizer(mps),
                     fd_model=finite_difference_classifier(clf, mps, *shapes),
                     finder_loss=finder_loss)

    def init_meta(rng):
        if mps.meta_target == "generator":
            params = generator.params
        else:
            params = jax.jit(finder.init)(rng, jnp.zeros((1,) + tuple(generator.latent_shape)))
        return {"params": params, "opt": ctx.meta_tx.init(params)}
    frozen = {} if mps.meta_target == "generator" else {"generator": generator.params}
    needs_val = mps.finder_update == "meta"
    between = None
    if mps.update_every > 1:  # checked like the meta step, so one pipeline serves both
        between = _with_step_key(functools.partial(between_step, ctx=ctx), clf, needs_val)
    return Method(_with_step_key(functools.partial(mps_step, ctx=ctx), clf, needs_val),
                  init_meta, frozen, needs_val=needs_val, classifier=clf, name=name,
                  between_step=between, update_every=mps.update_every)
