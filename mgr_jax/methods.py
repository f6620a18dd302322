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
(plus "val_image", "val_label", a D_val batch, when `method.needs_val`), a PRNG key (the
step folds in state.step, so the same key can be passed every step) and `method.frozen`.
`frozen` holds parameters the step reads but never changes (the generator's, unless the
generator itself is meta-optimised); passing them as an argument keeps them out of the
compiled program's constants. Jit it as `jax.jit(method.train_step)`, optionally with
`donate_argnums=(0,)`. Algorithm 1 (MPS) is `mps_step` (its three steps `meta_gradient`,
`update_finder`, `real_step`); the uniform-sampling methods share `uniform_step`. With
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
import optax

from mgr_jax import (
    classifier,
    contract,
    hypergrad,
    losses,
    regularisers,
    synthetic as synthetic_lib,
)
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


@dataclasses.dataclass(frozen=True)
class UniformContext:
    """What a step with a synthetic loss needs (every method but base): the classifier and
    its optimiser, the generator, the regulariser with its settings, the device layout."""
    model: Any  # the contract.Classifier
    tx: Any
    learning_rate_fn: Callable
    generator: Any
    regulariser: regularisers.Regulariser
    synthetic: SyntheticSettings
    num_classes: int
    settings: Any = None  # the regulariser's own settings
    head: Any = None  # the regulariser's extra head (a Flax module), if it has one
    data_sharding: Any = None

    @property
    def lam(self):
        return float(self.synthetic.lambda_)

    def syn_loss(self, params, batch_stats, x01, y, key, head=None, model=None):
        """L_syn (unweighted) of the images x01 at `params`; model: another classifier to
        evaluate it with (the finite-difference twin), default the context's."""
        net = self.model if model is None else model
        inputs = regularisers.LossInputs(
            forward=lambda images: synthetic_lib.train_mode_outputs(net, params, batch_stats,
                                                                   images),
            images=x01, labels=y, key=key, strong=regularisers.strong_augment(self.synthetic),
            head=head, settings=self.settings, synthetic=self.synthetic)
        return self.regulariser.loss(inputs)

    def draw(self, rng):
        """(z, y_p, augmentation key) of a step's key; z and y_p split over the devices like
        the real batch (no-op on one device)."""
        k_lat, k_aug = jax.random.split(rng)
        z, y = synthetic_lib.draw_latents(k_lat, self.generator, self.synthetic.batch_size,
                                          self.num_classes)
        if self.data_sharding is not None:
            z, y = jax.lax.with_sharding_constraint((z, y), self.data_sharding)
        return z, y, k_aug

    def synthesize(self, gen_params, w, y):
        """x_p in [0, 1] at the classifier's (H, W) and channel count."""
        shape = self.model.input_shape
        return synthetic_lib.synthesize(self.generator, gen_params, w, y, shape[:2],
                                        channels=shape[2])


@dataclasses.dataclass(frozen=True)
class MPSContext:
    """What Algorithm 1 adds: the MPS settings, the finder and its optimiser, the classifier
    the finite-difference hypergradient evaluates L_syn with, the Table 7 ablation's loss."""
    uniform: UniformContext
    mps: MPSSettings
    finder: Finder
    meta_tx: Any
    fd_model: Any  # the float32 twin of a narrower classifier, else the classifier
    finder_loss: Callable = None  # (params, batch_stats, x01, y, key) -> what F maximises


def _real_ce(model, state, batch):
    """CE on the real batch as a function of params -> (loss, (logits, new batch stats))."""
    def fn(params):
        logits, _, stats = classifier.classifier_forward(model, params, state.batch_stats,
                                                         batch["image"], True)
        return losses.cross_entropy(logits, batch["label"]), (logits, stats)
    return fn


def _val_ce(model, state, batch):
    """CE on the D_val batch at theta' (train-mode BN on that batch; its stats are dropped)."""
    def fn(params):
        logits, _, _ = classifier.classifier_forward(model, params, state.batch_stats,
                                                     batch["val_image"], True)
        return losses.cross_entropy(logits, batch["val_label"])
    return fn


def _accuracy(logits, labels):
    return 100.0 * jnp.mean(jnp.argmax(logits, -1) == labels)


# ------------------------------------------------------------------ base and uniform


def base_step(state, batch, rng, frozen, *, model, tx, learning_rate_fn):
    """CE on the real batch only."""
    del frozen
    return classifier.train_step(state, batch, rng, model=model, tx=tx,
                                 learning_rate_fn=learning_rate_fn)


def uniform_step(state, batch, rng, frozen, *, ctx):
    """GDA, GDA multi-head, GDA+SSL, PCR (any registered regulariser):
    CE(real) + lambda * L_syn(x_p), z ~ N(0, I)."""
    z, y, k_aug = ctx.draw(rng)
    return _uniform_update(state, batch, ctx, frozen["generator"], z, y, k_aug)


def between_step(state, batch, rng, frozen, *, ctx):
    """A step between two meta-updates (mps.update_every > 1): the uniform step of the
    method's synthetic loss (PCR for mgr, GDA for gda_mps) on x_p = G(F_phi(z)) with the
    current phi, held fixed; the meta state (phi and its optimiser) is left as it is."""
    z, y, k_aug = ctx.uniform.draw(rng)
    phi, gen_params = _meta_params(state, frozen, ctx.mps)
    if ctx.mps.meta_target == "finder":
        w = ctx.finder.apply(phi, z)
    else:
        w, gen_params = z, phi
    state, metrics = _uniform_update(state, batch, ctx.uniform, gen_params, w, y, k_aug)
    metrics.update(_latent_metrics(ctx.mps, z, w))
    return state, metrics


def _uniform_update(state, batch, ctx, gen_params, w, y, k_aug):
    """The classifier's step on CE(real) + lambda * L_syn(x_p), x_p = G(w, y) held fixed."""
    x01 = jax.lax.stop_gradient(ctx.synthesize(gen_params, w, y))
    head_params = state.meta.get("aux_head")

    def loss_fn(params, head_params):
        ce, (logits, stats) = _real_ce(ctx.model, state, batch)(params)
        head = None
        if head_params is not None:
            head = lambda f: ctx.head.apply(head_params, f)  # noqa: E731
        syn = ctx.syn_loss(params, state.batch_stats, x01, y, k_aug, head=head)
        return ce + ctx.lam * syn, (ce, syn, logits, stats)

    (loss, (ce, syn, logits, stats)), (grads, head_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(state.params, head_params)
    meta = state.meta
    if head_params is not None:  # the extra head learns with the classifier's optimiser.
        upd, head_opt = ctx.tx.update(head_grads, meta["aux_opt"], head_params)
        meta = {"aux_head": optax.apply_updates(head_params, upd), "aux_opt": head_opt}
    metrics = {"loss": loss, "ce": ce, "syn": syn, "accuracy": _accuracy(logits, batch["label"]),
               "lr": ctx.learning_rate_fn(state.step)}
    return classifier.apply_classifier_update(state, ctx.tx, grads, stats, meta), metrics


# ------------------------------------------------------------------ MPS (Algorithm 1)


@dataclasses.dataclass(frozen=True)
class _MetaStep:
    """One MPS step's fixed inputs and the maps of phi it differentiates."""
    ctx: MPSContext
    state: Any
    batch: Any
    z: Any
    y: Any
    key: Any  # the augmentation's
    eta: Any  # the scheduled learning rate: the virtual step's
    gen_params: Any  # None when G itself is meta-optimised

    def latents(self, phi):
        return self.ctx.finder.apply(phi, self.z) if self.ctx.mps.meta_target == "finder" \
            else self.z

    def images(self, phi):
        g = phi if self.ctx.mps.meta_target == "generator" else self.gen_params
        return self.ctx.uniform.synthesize(g, self.latents(phi), self.y)

    def l_syn(self, params, x01):
        """lambda * L_syn at theta = params on the images x01."""
        u = self.ctx.uniform
        return u.lam * u.syn_loss(params, self.state.batch_stats, x01, self.y, self.key)

    def l_syn_fd(self, params, x01):
        """The same, for the finite-difference hypergradient (float32 twin if any)."""
        u = self.ctx.uniform
        return u.lam * u.syn_loss(params, self.state.batch_stats, x01, self.y, self.key,
                                  model=self.ctx.fd_model)


def mps_step(state, batch, rng, frozen, *, ctx):
    """Algorithm 1: virtual SGD step, finder (or generator) update on D_val, real step.

    1. theta' = theta - eta * grad[CE(real) + lambda L_syn(theta, phi)] (plain SGD, current lr;
       BN statistics and optimiser state untouched): `meta_gradient`, which returns the
       hypergradient d CE_val(theta') / d phi, exact or finite-difference
       (`mps.hypergradient`; evaluated in float32 for a classifier that computes in bfloat16,
       see `finite_difference_classifier`).
    2. phi <- Adam(hypergradient + kl_weight * grad KL(F(z))): `update_finder`; the optimiser
       is `finder_optimizer(mps)`, fed the sum / its norm with `normalize_hypergrad`.
    3. theta takes its real step on the same real batch with x_p regenerated from the new phi:
       `real_step`.
    `log_meta_descent` re-evaluates M = CE_val(theta') at the new phi (same batches, z, T):
    metrics meta_loss_after, meta_descent = M(new) - M(old), meta_descended (1.0 if lower).
    CE(real) and its gradient at theta are computed once and reused by steps 1 and 3. phi acts
    on L_syn only through the images x_p = G(F_phi(z)), so x_p is generated once with its
    pullback (jax.vjp): steps 1-2 differentiate L_syn w.r.t. the images, and one backward
    pass through G maps that hypergradient to phi (exact by the chain rule; tested equal to
    `hypergrad.meta_gradient` on the whole objective).
    """
    z, y, k_aug = ctx.uniform.draw(rng)
    phi, gen_params = _meta_params(state, frozen, ctx.mps)
    step = _MetaStep(ctx, state, batch, z, y, k_aug, ctx.uniform.learning_rate_fn(state.step),
                     gen_params)
    real = jax.value_and_grad(_real_ce(ctx.uniform.model, state, batch), has_aux=True)
    (ce, (logits, stats)), g_ce = real(state.params)
    hyper, metrics = meta_gradient(step, phi, g_ce)
    phi, meta_opt, finder_metrics = update_finder(step, phi, hyper, state.meta["opt"])
    metrics.update(finder_metrics)
    return real_step(step, phi, meta_opt, ce, logits, stats, g_ce, metrics)


def meta_gradient(step, phi, g_ce):
    """Step 1: (d M / d phi, metrics), M = CE_val(theta') with theta' the virtual SGD step;
    with a Table 7 ablation (`finder_update` max_ce / max_pcr) the gradient of -lambda times
    the finder's own loss instead. metrics: meta_loss, and with `log_hypergrad_cosine` the
    cosine and norm ratio of the exact and finite-difference hypergradients on phi."""
    ctx, state, cfg = step.ctx, step.state, step.ctx.mps
    x01, pullback = jax.vjp(step.images, phi)
    if cfg.finder_update != "meta":  # ablation: F maximises CE or PCR on x_p, no meta-learning.
        g_x = jax.grad(ctx.finder_loss, argnums=2)(state.params, state.batch_stats, x01, step.y,
                                                   step.key)
        return pullback(-ctx.uniform.lam * g_x)[0], {}
    if cfg.hypergradient == "exact" or cfg.log_hypergrad_cosine:
        g_syn, exact = hypergrad.inner_gradient_and_mixed(step.l_syn, state.params, x01,
                                                          step.eta)
    else:
        g_syn = jax.grad(step.l_syn)(state.params, x01)
    val_ce = _val_ce(ctx.uniform.model, state, step.batch)
    val_loss, v = jax.value_and_grad(val_ce)(_virtual(state.params, g_ce, g_syn, step.eta))

    def in_image_space(kind):  # d M / d x_p
        if kind == "exact":
            return exact(v)
        return hypergrad.finite_difference_hypergradient(step.l_syn_fd, state.params, x01, v,
                                                         step.eta, cfg.fd_eps)
    hyper = pullback(in_image_space(cfg.hypergradient))[0]
    metrics = {"meta_loss": val_loss}
    if cfg.log_hypergrad_cosine:  # compared on phi, where the update happens
        other = pullback(in_image_space("finite_difference" if cfg.hypergradient == "exact"
                                        else "exact"))[0]
        norm, other_norm = optax.tree_utils.tree_norm(hyper), optax.tree_utils.tree_norm(other)
        metrics["hypergrad_cosine"] = optax.tree_utils.tree_vdot(hyper, other) / (
            norm * other_norm + 1e-30)
        metrics["hypergrad_norm_ratio"] = norm / (other_norm + 1e-30)
    return hyper, metrics


def update_finder(step, phi, hyper, opt_state):
    """Step 2: phi's optimiser step on hyper + kl_weight * grad KL(F_phi(z)) (finder target).
    metrics: hypergrad_norm (of that sum, what the optimiser is fed), meta_grad_norm (the
    first term alone), and with the KL term kl and kl_grad_norm (its weighted gradient's)."""
    cfg = step.ctx.mps
    metrics = {"meta_grad_norm": optax.tree_utils.tree_norm(hyper)}
    if cfg.meta_target == "finder" and cfg.kl_weight:
        kl, g_kl = jax.value_and_grad(lambda p: losses.kl_penalty(
            step.latents(p).reshape(step.z.shape[0], -1)))(phi)
        g_kl = jax.tree.map(lambda g: cfg.kl_weight * g, g_kl)
        hyper = jax.tree.map(jnp.add, hyper, g_kl)
        metrics.update(kl=kl, kl_grad_norm=optax.tree_utils.tree_norm(g_kl))
    metrics["hypergrad_norm"] = optax.tree_utils.tree_norm(hyper)
    if cfg.normalize_hypergrad:  # the optimiser sees the direction only
        hyper = jax.tree.map(lambda g: g / (metrics["hypergrad_norm"] + 1e-12), hyper)
    upd, opt_state = step.ctx.meta_tx.update(hyper, opt_state, phi)
    return optax.apply_updates(phi, upd), opt_state, metrics


def real_step(step, phi, meta_opt, ce, logits, stats, g_ce, metrics):
    """Step 3: theta's step on CE(real) + lambda L_syn(x_p), x_p = G(F_phi(z)) at the new phi
    (CE's value and gradient reused from step 1)."""
    ctx, state, cfg = step.ctx, step.state, step.ctx.mps
    syn, g_syn = jax.value_and_grad(step.l_syn)(state.params, step.images(phi))
    if cfg.log_meta_descent and cfg.finder_update == "meta":
        # M(phi_new) on the same real batch, z, y, T and D_val batch: one more D_val forward.
        after = _val_ce(ctx.uniform.model, state, step.batch)(
            _virtual(state.params, g_ce, g_syn, step.eta))
        metrics.update(meta_loss_after=after, meta_descent=after - metrics["meta_loss"],
                       meta_descended=(after < metrics["meta_loss"]).astype(jnp.float32))
    grads = jax.tree.map(jnp.add, g_ce, g_syn)
    lam = ctx.uniform.lam
    metrics.update(loss=ce + syn, ce=ce, syn=syn / jnp.maximum(lam, 1e-12),
                   accuracy=_accuracy(logits, step.batch["label"]), lr=step.eta,
                   **_latent_metrics(cfg, step.z, step.latents(phi)))
    meta = {"params": phi, "opt": meta_opt}
    return classifier.apply_classifier_update(state, ctx.uniform.tx, grads, stats, meta), metrics


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


# ------------------------------------------------------------------ building a Method


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
