"""The seven methods as train steps `train_step(state, batch, rng, frozen) -> (state, metrics)`.

Built two ways, the same steps:
  - `build_method(name, model=..., tx=..., learning_rate_fn=..., num_classes=...,
    generator=..., synthetic=SyntheticSettings(...), mps=MPSSettings(...))` from explicit
    arguments, with any classifier that follows `mgr_jax.contract` (the library way);
  - `build(config, model=..., ...)` from a configs/default.py config: a thin layer that reads
    the settings from the config and calls `build_method` (what `train.setup` does).
Bad names and settings raise `SettingError` (a ValueError) when the method is built.

The step takes a TrainState (`classifier.create_train_state(..., meta=method.init_meta(key))`),
a batch {"image": (N, H, W, C) normalised by the classifier's `normalize`, "label": (N,) int}
(plus "val_image", "val_label", a D_val batch, when `method.needs_val`), a PRNG key (the
step folds in state.step, so the same key can be passed every step) and `method.frozen`.
`frozen` holds parameters the step reads but never changes (the generator's, unless the
generator itself is meta-optimised); passing them as an argument keeps them out of the
compiled program's constants. Jit it as `jax.jit(method.train_step)`, optionally with
`donate_argnums=(0,)`. Algorithm 1 (MPS) is `mps_step`; the uniform-sampling methods share
`uniform_step`. With `mps.update_every=k > 1` the finder takes its meta-update at every k-th
step only: `method.step_for(n)` is `train_step` (the meta step) when n % k == 0 and
`between_step` (the method's uniform step on latents F_phi(z), meta state unchanged)
otherwise; `method.jit()` jits both, each a program of its own.
"""
import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mgr_jax import classifier, config_lib, contract, hypergrad, losses
from mgr_jax import synthetic as synthetic_lib
from mgr_jax.finder import Finder
from mgr_jax.generators import load_generator
from mgr_jax.method_settings import (  # noqa: F401  (re-exported: the library's names)
    FINDER_OPTIMIZERS,
    FINDER_UPDATES,
    META_TARGETS,
    MPSSettings,
    SettingError,
    SyntheticSettings,
    _choice,
    _number,
    _require,
    check_generator,
    finder_optimizer,
    finite_difference_classifier,
    settings_from_config,
)

# method -> (synthetic loss, latent choice)
SYNTHETIC = {"gda": ("gda", "uniform"), "gda_mh": ("gda_mh", "uniform"),
             "gda_ssl": ("gda_ssl", "uniform"), "pcr": ("pcr", "uniform"),
             "gda_mps": ("gda", "mps"), "mgr": ("pcr", "mps")}
METHODS = ("base", "gda", "gda_mh", "gda_ssl", "gda_mps", "pcr", "mgr")


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


def _real_ce(model, state, batch):
    """CE on the real batch as a function of params -> (loss, (logits, new batch stats))."""
    def fn(params):
        logits, _, stats = classifier.classifier_forward(model, params, state.batch_stats,
                                                    batch["image"], True)
        return losses.cross_entropy(logits, batch["label"]), (logits, stats)
    return fn


def _synthesize(ctx, gen_params, w, y):
    """x_p in [0, 1] at the classifier's (H, W) and channel count."""
    return synthetic_lib.synthesize(ctx.generator, gen_params, w, y, ctx.input_shape[:2],
                                    channels=ctx.input_shape[2])


def _accuracy(logits, labels):
    return 100.0 * jnp.mean(jnp.argmax(logits, -1) == labels)


def base_step(state, batch, rng, frozen, *, model, tx, learning_rate_fn):
    """CE on the real batch only."""
    del frozen
    return classifier.train_step(state, batch, rng, model=model, tx=tx,
                            learning_rate_fn=learning_rate_fn)


def _draw(ctx, rng):
    """(z, y_p, augmentation key) of a step's key."""
    k_lat, k_aug = jax.random.split(rng)
    z, y = ctx.split_batch(synthetic_lib.draw_latents(k_lat, ctx.generator, ctx.syn_batch,
                                                      ctx.num_classes))
    return z, y, k_aug


def uniform_step(state, batch, rng, frozen, *, ctx):
    """GDA, GDA multi-head, GDA+SSL, PCR: CE(real) + lambda * L_syn(x_p), z ~ N(0, I)."""
    z, y, k_aug = _draw(ctx, rng)
    return _uniform_update(state, batch, ctx, frozen["generator"], z, y, k_aug)


def between_step(state, batch, rng, frozen, *, ctx):
    """A step between two meta-updates (mps.update_every > 1): the uniform step of the
    method's synthetic loss (PCR for mgr, GDA for gda_mps) on x_p = G(F_phi(z)) with the
    current phi, held fixed; the meta state (phi and its optimiser) is left as it is."""
    z, y, k_aug = _draw(ctx, rng)
    phi, gen_params = _meta_params(state, frozen, ctx.mps)
    if ctx.mps.meta_target == "finder":
        w = ctx.finder.apply(phi, z)
    else:
        w, gen_params = z, phi
    state, metrics = _uniform_update(state, batch, ctx, gen_params, w, y, k_aug)
    metrics.update(_latent_metrics(ctx.mps, z, w))
    return state, metrics


def _uniform_update(state, batch, ctx, gen_params, w, y, k_aug):
    """The classifier's step on CE(real) + lambda * L_syn(x_p), x_p = G(w, y) held fixed."""
    x01 = jax.lax.stop_gradient(_synthesize(ctx, gen_params, w, y))
    aux = state.meta.get("aux_head")

    def loss_fn(params, aux_params):
        ce, (logits, stats) = _real_ce(ctx.model, state, batch)(params)
        head = (lambda f: ctx.aux_module.apply(aux_params, f)) if aux is not None else None
        syn = ctx.syn_loss(params, state.batch_stats, x01, y, k_aug, aux_head=head)
        return ce + ctx.lam * syn, (ce, syn, logits, stats)

    (loss, (ce, syn, logits, stats)), (grads, aux_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(state.params, aux)
    meta = state.meta
    if aux is not None:  # the second head learns with the classifier's optimiser.
        upd, aux_opt = ctx.tx.update(aux_grads, meta["aux_opt"], aux)
        meta = {"aux_head": optax.apply_updates(aux, upd), "aux_opt": aux_opt}
    metrics = {"loss": loss, "ce": ce, "syn": syn, "accuracy": _accuracy(logits, batch["label"]),
               "lr": ctx.learning_rate_fn(state.step)}
    return classifier.apply_classifier_update(state, ctx.tx, grads, stats, meta), metrics


def mps_step(state, batch, rng, frozen, *, ctx):
    """Algorithm 1: virtual SGD step, finder (or generator) update on D_val, real step.

    1. theta' = theta - eta * grad[CE(real) + lambda L_syn(theta, phi)] (plain SGD, current lr;
       BN statistics and optimiser state untouched).
    2. phi <- Adam(grad_phi [CE_val(theta') + kl_weight * KL(F(z))]), the hypergradient exact
       or finite-difference (`mps.hypergradient`; evaluated in float32 for a classifier that
       computes in bfloat16, see `finite_difference_classifier`); the optimiser is
       `finder_optimizer(mps)`, fed the hypergradient / its norm with `normalize_hypergrad`.
    3. theta takes its real step on the same real batch with x_p regenerated from the new phi.
    `log_meta_descent` re-evaluates M = CE_val(theta') at the new phi (same batches, z, T):
    metrics meta_loss_after, meta_descent = M(new) - M(old), meta_descended (1.0 if lower).
    CE(real) and its gradient at theta are computed once and reused by steps 1 and 3. phi acts
    on L_syn only through the images x_p = G(F_phi(z)), so x_p is generated once with its
    pullback (jax.vjp): steps 1-2 differentiate L_syn w.r.t. the images, and one backward
    pass through G maps that hypergradient to phi (exact by the chain rule; tested equal to
    `hypergrad.meta_gradient` on the whole objective).
    """
    cfg = ctx.mps
    z, y, k_aug = _draw(ctx, rng)
    eta = ctx.learning_rate_fn(state.step)
    phi, gen_params = _meta_params(state, frozen, cfg)

    def latents(p):
        return ctx.finder.apply(p, z) if cfg.meta_target == "finder" else z

    def images(p):
        g = p if cfg.meta_target == "generator" else gen_params
        return _synthesize(ctx, g, latents(p), y)

    def l_syn(params, x01):
        return ctx.lam * ctx.syn_loss(params, state.batch_stats, x01, y, k_aug)

    def l_syn_fd(params, x01):  # the same loss, in float32 for a narrower-dtype classifier
        return ctx.lam * ctx.syn_loss_fd(params, state.batch_stats, x01, y, k_aug)

    (ce, (logits, stats)), g_ce = jax.value_and_grad(_real_ce(ctx.model, state, batch),
                                                     has_aux=True)(state.params)
    x01, pullback = jax.vjp(images, phi)
    metrics = {}
    if cfg.finder_update == "meta":
        if cfg.hypergradient == "exact" or cfg.log_hypergrad_cosine:
            g_syn, exact = hypergrad.inner_gradient_and_mixed(l_syn, state.params, x01, eta)
        else:
            g_syn = jax.grad(l_syn)(state.params, x01)
        val_ce = _val_ce(ctx.model, state, batch)
        val_loss, v = jax.value_and_grad(val_ce)(_virtual(state.params, g_ce, g_syn, eta))

        def hypergradient(kind):  # image space: d(meta loss)/d x_p
            if kind == "exact":
                return exact(v)
            return hypergrad.finite_difference_hypergradient(l_syn_fd, state.params, x01, v,
                                                             eta, cfg.fd_eps)
        hyper_x = hypergradient(cfg.hypergradient)
        metrics["meta_loss"] = val_loss
        if cfg.log_hypergrad_cosine:
            other_x = hypergradient("finite_difference" if cfg.hypergradient == "exact"
                                    else "exact")
            # Compared on phi, where the update happens (one more pullback).
            hyper, other = pullback(hyper_x)[0], pullback(other_x)[0]
            metrics["hypergrad_cosine"] = optax.tree_utils.tree_vdot(hyper, other) / (
                optax.tree_utils.tree_norm(hyper) * optax.tree_utils.tree_norm(other) + 1e-30)
            metrics["hypergrad_norm_ratio"] = optax.tree_utils.tree_norm(hyper) / (
                optax.tree_utils.tree_norm(other) + 1e-30)
        else:
            hyper = pullback(hyper_x)[0]
    else:  # ablation (Table 7): the finder maximises CE or PCR on x_p, no meta-learning.
        g_x = jax.grad(ctx.finder_loss, argnums=2)(state.params, state.batch_stats, x01, y,
                                                   k_aug)
        hyper = pullback(-ctx.lam * g_x)[0]
    if cfg.meta_target == "finder" and cfg.kl_weight:
        kl, g_kl = jax.value_and_grad(lambda p: losses.kl_penalty(
            latents(p).reshape(z.shape[0], -1)))(phi)
        hyper = jax.tree.map(lambda a, b: a + cfg.kl_weight * b, hyper, g_kl)
        metrics["kl"] = kl
    metrics["hypergrad_norm"] = optax.tree_utils.tree_norm(hyper)
    if cfg.normalize_hypergrad:  # the optimiser sees the direction only
        hyper = jax.tree.map(lambda g: g / (metrics["hypergrad_norm"] + 1e-12), hyper)
    upd, meta_opt = ctx.meta_tx.update(hyper, state.meta["opt"], phi)
    phi = optax.apply_updates(phi, upd)

    syn, g_syn_new = jax.value_and_grad(l_syn)(state.params, images(phi))
    if cfg.log_meta_descent and cfg.finder_update == "meta":
        # M(phi_new) on the same real batch, z, y, T and D_val batch: one more D_val forward.
        after = val_ce(_virtual(state.params, g_ce, g_syn_new, eta))
        metrics.update(meta_loss_after=after, meta_descent=after - val_loss,
                       meta_descended=(after < val_loss).astype(jnp.float32))
    grads = jax.tree.map(jnp.add, g_ce, g_syn_new)
    metrics.update(loss=ce + syn, ce=ce, syn=syn / jnp.maximum(ctx.lam, 1e-12),
                   accuracy=_accuracy(logits, batch["label"]), lr=eta,
                   **_latent_metrics(cfg, z, latents(phi)))
    meta = {"params": phi, "opt": meta_opt}
    return classifier.apply_classifier_update(state, ctx.tx, grads, stats, meta), metrics


def _virtual(params, g_ce, g_syn, eta):
    """theta' = theta - eta * (grad CE(real) + grad lambda L_syn): the virtual SGD step."""
    return jax.tree.map(lambda t, a, b: t - eta * (a + b), params, g_ce, g_syn)


def _latent_metrics(cfg, z, w):
    """finder_norm = mean ||w||; latent_displacement = mean ||F(z) - z|| (finder target)."""
    z, w = z.reshape(z.shape[0], -1), w.reshape(z.shape[0], -1)
    out = {"finder_norm": jnp.mean(jnp.linalg.norm(w, axis=-1))}
    if cfg.meta_target == "finder":
        out["latent_displacement"] = jnp.mean(jnp.linalg.norm(w - z, axis=-1))
    return out


def _meta_params(state, frozen, cfg):
    if cfg.meta_target == "generator":
        return state.meta["params"], None
    return state.meta["params"], frozen["generator"]


def _val_ce(model, state, batch):
    """CE on the D_val batch at theta' (train-mode BN on that batch; its stats are dropped)."""
    def fn(params):
        logits, _, _ = classifier.classifier_forward(model, params, state.batch_stats,
                                                batch["val_image"], True)
        return losses.cross_entropy(logits, batch["val_label"])
    return fn


@dataclasses.dataclass(frozen=True)
class _Context:
    model: Any  # the contract.Classifier
    tx: Any
    learning_rate_fn: Callable
    generator: Any
    syn_loss: Callable
    lam: float
    syn_batch: int
    num_classes: int
    input_shape: Any  # (H, W, C) of the classifier
    mps: Any = None
    finder: Any = None
    meta_tx: Any = None
    aux_module: Any = None
    finder_loss: Callable = None  # (params, batch_stats, x01, y, key) -> the loss F maximises
    syn_loss_fd: Callable = None  # syn_loss for the finite-difference hypergradient (float32)
    data_sharding: Any = None

    def split_batch(self, arrays):
        """Split synthetic draws over the devices like the real batch (no-op on one device)."""
        if self.data_sharding is None:
            return arrays
        return jax.lax.with_sharding_constraint(arrays, self.data_sharding)


def _with_step_key(step_fn, clf, needs_val):
    """Give each step its own key: fold the step number into the loop's key (inside jit).
    The batch is checked against the contract when the step is traced."""
    def wrapped(state, batch, rng, frozen):
        contract.check_batch(batch, clf, needs_val)
        return step_fn(state, batch, jax.random.fold_in(rng, state.step), frozen)
    return wrapped


def build(config, *, model, tx, learning_rate_fn, num_classes, image_size=None,
          data_sharding=None, generator=None):
    """The Method that `config.method` names, with its generator (loaded from
    `config.generator` unless a `Generator` is given): `build_method` with the settings read
    from the config. model: a `contract.Classifier` or a bare module (then `image_size`, an
    int side or (H, W), gives its input size). The config is checked first
    (`config_lib.validate`, without the file checks: the weights are the caller's)."""
    config_lib.validate(config, paths=False)
    _choice("method", config.method, METHODS)
    syn, mps = settings_from_config(config)
    clf = contract.as_classifier(model, image_size)
    if config.method != "base" and generator is None:
        generator = load_generator(config.generator, num_classes)
    return build_method(config.method, model=clf, tx=tx, learning_rate_fn=learning_rate_fn,
                        num_classes=num_classes, generator=generator, synthetic=syn, mps=mps,
                        data_sharding=data_sharding)


def build_method(method, *, model, tx, learning_rate_fn, num_classes, generator=None,
                 synthetic=None, mps=None, image_size=None, data_sharding=None):
    """A method's Method from explicit arguments.

    method: one of METHODS. model: a `contract.Classifier` (or a bare module following the
    contract, with image_size). tx: the classifier's optax optimiser (also the second head's,
    gda_mh); learning_rate_fn: step -> lr, the eta of MPS's virtual step. generator: a
    `generators.Generator` (every method but base). synthetic: SyntheticSettings; mps:
    MPSSettings (gda_mps, mgr). Everything is checked here (SettingError, ContractError);
    nothing is compiled.
    """
    _choice("method", method, METHODS)
    synthetic = SyntheticSettings() if synthetic is None else synthetic
    mps = MPSSettings() if mps is None else mps
    _require(isinstance(synthetic, SyntheticSettings),
             f"synthetic={synthetic!r} must be a methods.SyntheticSettings")
    _require(isinstance(mps, MPSSettings), f"mps={mps!r} must be a methods.MPSSettings")
    _number("num_classes", num_classes, 1, integer=True)
    _require(callable(learning_rate_fn), "learning_rate_fn must be a function step -> lr")
    _require(callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None)),
             f"tx={tx!r} must be an optax GradientTransformation")
    clf = contract.as_classifier(model, image_size)
    if clf.input_shape is None:
        raise contract.ContractError("build_method needs the classifier's input shape: "
                                     "Classifier(module, input_shape=(H, W, C)) or image_size")
    logits_shape, features_shape = clf.output_shapes()
    if logits_shape.shape[-1] != num_classes:
        raise contract.ContractError(f"the classifier has {logits_shape.shape[-1]} logits and "
                                     f"num_classes={num_classes}")
    if method == "base":
        step = functools.partial(base_step, model=clf, tx=tx, learning_rate_fn=learning_rate_fn)
        return Method(_with_step_key(step, clf, False), init_meta=lambda rng: {},
                      classifier=clf, name=method)
    check_generator(generator, num_classes)
    loss_kind, sampling = SYNTHETIC[method]
    if sampling == "mps" and mps.meta_target == "finder" and mps.kl_weight:
        _require(synthetic.batch_size >= 2, f"synthetic batch_size={synthetic.batch_size}: "
                 "the KL penalty needs at least two samples (or mps.kl_weight=0)")
    aug = {"num_ops": synthetic.augment_num_ops, "max_magnitude": synthetic.augment_max_magnitude}
    if synthetic.augment_ops != SyntheticSettings().augment_ops:
        aug["ops"] = synthetic.augment_ops
    uda = {"temperature": synthetic.uda_temperature, "threshold": synthetic.uda_threshold}

    def loss_of(net):
        def syn_loss(params, batch_stats, x01, y, key, aux_head=None):
            return synthetic_lib.synthetic_loss(loss_kind, net, params, batch_stats, x01, y, key,
                                                aux_head=aux_head, aug_config=aug,
                                                uda_config=uda)
        return syn_loss

    ctx = _Context(model=clf, tx=tx, learning_rate_fn=learning_rate_fn, generator=generator,
                   syn_loss=loss_of(clf), lam=float(synthetic.lambda_),
                   syn_batch=synthetic.batch_size, num_classes=num_classes,
                   input_shape=clf.input_shape, data_sharding=data_sharding)
    frozen = {"generator": generator.params}
    if sampling == "uniform":
        if loss_kind == "gda_mh":  # the second head reads g(x): its size from the features.
            ctx = dataclasses.replace(ctx, aux_module=nn.Dense(num_classes))
            feat_dim = features_shape.shape[-1]

            def init_meta(rng):
                aux = jax.jit(ctx.aux_module.init)(rng, jnp.zeros((1, feat_dim)))
                return {"aux_head": aux, "aux_opt": tx.init(aux)}
        else:
            init_meta = lambda rng: {}  # noqa: E731
        return Method(_with_step_key(functools.partial(uniform_step, ctx=ctx), clf, False),
                      init_meta, frozen, classifier=clf, name=method)
    finder = Finder(arch=mps.finder_arch, hidden_dim=mps.finder_hidden_dim)
    ctx = dataclasses.replace(ctx, mps=mps, finder=finder, meta_tx=finder_optimizer(mps),
                              syn_loss_fd=loss_of(finite_difference_classifier(
                                  clf, mps, logits_shape, features_shape)))
    if mps.finder_update != "meta":  # Table 7: CE (as GDA's) or PCR on x_p, whatever L_syn is.
        finder_kind = {"max_ce": "gda", "max_pcr": "pcr"}[mps.finder_update]
        ctx = dataclasses.replace(ctx, finder_loss=functools.partial(
            synthetic_lib.synthetic_loss, finder_kind, clf, aug_config=aug, uda_config=uda))

    def init_meta(rng):
        if mps.meta_target == "generator":
            params = generator.params
        else:
            params = jax.jit(finder.init)(rng, jnp.zeros((1,) + tuple(generator.latent_shape)))
        return {"params": params, "opt": ctx.meta_tx.init(params)}
    if mps.meta_target == "generator":
        frozen = {}
    needs_val = mps.finder_update == "meta"
    between = None
    if mps.update_every > 1:  # checked like the meta step, so one pipeline serves both
        between = _with_step_key(functools.partial(between_step, ctx=ctx), clf, needs_val)
    return Method(_with_step_key(functools.partial(mps_step, ctx=ctx), clf, needs_val),
                  init_meta, frozen, needs_val=needs_val, classifier=clf, name=method,
                  between_step=between, update_every=mps.update_every)
