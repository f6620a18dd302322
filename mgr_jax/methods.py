"""The seven methods as train steps `train_step(state, batch, rng, frozen) -> (state, metrics)`.

`frozen` holds parameters the step reads but never changes (the generator's, unless the
generator itself is meta-optimised); passing them as an argument keeps them out of the
compiled program's constants. Algorithm 1 (MPS) is `mps_step`; the uniform-sampling methods
share `uniform_step`.
"""
import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mgr_jax import classifier, hypergrad, losses, synthetic
from mgr_jax.finder import Finder
from mgr_jax.generators import load_generator

# method -> (synthetic loss, latent choice)
SYNTHETIC = {"gda": ("gda", "uniform"), "gda_mh": ("gda_mh", "uniform"),
             "gda_ssl": ("gda_ssl", "uniform"), "pcr": ("pcr", "uniform"),
             "gda_mps": ("gda", "mps"), "mgr": ("pcr", "mps")}


@dataclasses.dataclass(frozen=True)
class Method:
    """A method's pieces: its step, its extra state (TrainState.meta), its data needs."""
    train_step: Callable  # (state, batch, rng, frozen) -> (state, metrics)
    init_meta: Callable  # rng -> pytree stored in TrainState.meta
    frozen: Any = dataclasses.field(default_factory=dict)
    needs_val: bool = False  # whether batches carry a D_val batch (MPS)

    def with_frozen(self, frozen):
        return dataclasses.replace(self, frozen=frozen)


def _real_ce(model, state, batch):
    """CE on the real batch as a function of params -> (loss, (logits, new batch stats))."""
    def fn(params):
        logits, _, stats = classifier.classifier_forward(model, params, state.batch_stats,
                                                    batch["image"], True)
        return losses.cross_entropy(logits, batch["label"]), (logits, stats)
    return fn


def _accuracy(logits, labels):
    return 100.0 * jnp.mean(jnp.argmax(logits, -1) == labels)


def base_step(state, batch, rng, frozen, *, model, tx, learning_rate_fn):
    """CE on the real batch only."""
    del frozen
    return classifier.train_step(state, batch, rng, model=model, tx=tx,
                            learning_rate_fn=learning_rate_fn)


def uniform_step(state, batch, rng, frozen, *, ctx):
    """GDA, GDA multi-head, GDA+SSL, PCR: CE(real) + lambda * L_syn(x_p), z ~ N(0, I)."""
    k_lat, k_aug = jax.random.split(rng)
    z, y = ctx.split_batch(synthetic.draw_latents(k_lat, ctx.generator, ctx.syn_batch,
                                                  ctx.num_classes))
    x01 = jax.lax.stop_gradient(synthetic.synthesize(ctx.generator, frozen["generator"], z, y,
                                                     ctx.image_size))
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
       or finite-difference (`mps.hypergradient`).
    3. theta takes its real step on the same real batch with x_p regenerated from the new phi.
    CE(real) and its gradient at theta are computed once and reused by steps 1 and 3. phi acts
    on L_syn only through the images x_p = G(F_phi(z)), so x_p is generated once with its
    pullback (jax.vjp): steps 1-2 differentiate L_syn w.r.t. the images, and one backward
    pass through G maps that hypergradient to phi (exact by the chain rule; tested equal to
    `hypergrad.meta_gradient` on the whole objective).
    """
    cfg = ctx.mps
    k_lat, k_aug = jax.random.split(rng)
    z, y = ctx.split_batch(synthetic.draw_latents(k_lat, ctx.generator, ctx.syn_batch,
                                                  ctx.num_classes))
    eta = ctx.learning_rate_fn(state.step)
    phi, gen_params = _meta_params(state, frozen, cfg)

    def latents(p):
        return ctx.finder.apply(p, z) if cfg.meta_target == "finder" else z

    def images(p):
        g = p if cfg.meta_target == "generator" else gen_params
        return synthetic.synthesize(ctx.generator, g, latents(p), y, ctx.image_size)

    def l_syn(params, x01):
        return ctx.lam * ctx.syn_loss(params, state.batch_stats, x01, y, k_aug)

    (ce, (logits, stats)), g_ce = jax.value_and_grad(_real_ce(ctx.model, state, batch),
                                                     has_aux=True)(state.params)
    x01, pullback = jax.vjp(images, phi)
    metrics = {}
    if cfg.finder_update == "meta":
        if cfg.hypergradient == "exact" or cfg.log_hypergrad_cosine:
            g_syn, exact = hypergrad.inner_gradient_and_mixed(l_syn, state.params, x01, eta)
        else:
            g_syn = jax.grad(l_syn)(state.params, x01)
        theta_v = jax.tree.map(lambda t, a, b: t - eta * (a + b), state.params, g_ce, g_syn)
        val_loss, v = jax.value_and_grad(_val_ce(ctx.model, state, batch))(theta_v)

        def hypergradient(kind):  # image space: d(meta loss)/d x_p
            if kind == "exact":
                return exact(v)
            return hypergrad.finite_difference_hypergradient(l_syn, state.params, x01, v, eta,
                                                             cfg.fd_eps)
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
    upd, meta_opt = ctx.meta_tx.update(hyper, state.meta["opt"], phi)
    phi = optax.apply_updates(phi, upd)

    syn, g_syn_new = jax.value_and_grad(l_syn)(state.params, images(phi))
    grads = jax.tree.map(jnp.add, g_ce, g_syn_new)
    w = latents(phi).reshape(z.shape[0], -1)
    metrics.update(loss=ce + syn, ce=ce, syn=syn / jnp.maximum(ctx.lam, 1e-12),
                   accuracy=_accuracy(logits, batch["label"]), lr=eta,
                   finder_norm=jnp.mean(jnp.linalg.norm(w, axis=-1)),
                   hypergrad_norm=optax.tree_utils.tree_norm(hyper))
    meta = {"params": phi, "opt": meta_opt}
    return classifier.apply_classifier_update(state, ctx.tx, grads, stats, meta), metrics


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
    model: Any
    tx: Any
    learning_rate_fn: Callable
    generator: Any
    syn_loss: Callable
    lam: float
    syn_batch: int
    num_classes: int
    image_size: int
    mps: Any = None
    finder: Any = None
    meta_tx: Any = None
    aux_module: Any = None
    finder_loss: Callable = None  # (params, batch_stats, x01, y, key) -> the loss F maximises
    data_sharding: Any = None

    def split_batch(self, arrays):
        """Split synthetic draws over the devices like the real batch (no-op on one device)."""
        if self.data_sharding is None:
            return arrays
        return jax.lax.with_sharding_constraint(arrays, self.data_sharding)


def _with_step_key(step_fn):
    """Give each step its own key: fold the step number into the loop's key (inside jit)."""
    def wrapped(state, batch, rng, frozen):
        return step_fn(state, batch, jax.random.fold_in(rng, state.step), frozen)
    return wrapped


def build(config, *, model, tx, learning_rate_fn, num_classes, image_size, data_sharding=None,
          generator=None):
    """The Method that `config.method` names, with its generator (loaded from
    `config.generator` unless a `Generator` is given)."""
    if config.method == "base":
        step = functools.partial(base_step, model=model, tx=tx, learning_rate_fn=learning_rate_fn)
        return Method(_with_step_key(step), init_meta=lambda rng: {})
    loss_kind, sampling = SYNTHETIC[config.method]
    if generator is None:
        generator = load_generator(config.generator, num_classes)
    aug = {"num_ops": config.augment.num_ops, "max_magnitude": config.augment.max_magnitude}
    uda = {"temperature": config.uda.temperature, "threshold": config.uda.threshold}

    def syn_loss(params, batch_stats, x01, y, key, aux_head=None):
        return synthetic.synthetic_loss(loss_kind, model, params, batch_stats, x01, y, key,
                                        aux_head=aux_head, aug_config=aug, uda_config=uda)

    ctx = _Context(model=model, tx=tx, learning_rate_fn=learning_rate_fn, generator=generator,
                   syn_loss=syn_loss, lam=float(config.lambda_),
                   syn_batch=config.synthetic_batch_size, num_classes=num_classes,
                   image_size=image_size, data_sharding=data_sharding)
    frozen = {"generator": generator.params}
    if sampling == "uniform":
        if loss_kind == "gda_mh":
            ctx = dataclasses.replace(ctx, aux_module=nn.Dense(num_classes))

            def init_meta(rng):
                feat_dim = _feature_dim(model, image_size)
                aux = ctx.aux_module.init(rng, jnp.zeros((1, feat_dim)))
                return {"aux_head": aux, "aux_opt": tx.init(aux)}
        else:
            init_meta = lambda rng: {}  # noqa: E731
        return Method(_with_step_key(functools.partial(uniform_step, ctx=ctx)), init_meta,
                      frozen)
    cfg = config.mps
    finder = Finder(arch=config.finder.arch, hidden_dim=config.finder.hidden_dim)
    ctx = dataclasses.replace(ctx, mps=cfg, finder=finder, meta_tx=optax.adam(cfg.finder_lr))
    if cfg.finder_update != "meta":  # Table 7: CE (as GDA's) or PCR on x_p, whatever L_syn is.
        finder_kind = {"max_ce": "gda", "max_pcr": "pcr"}[cfg.finder_update]
        ctx = dataclasses.replace(ctx, finder_loss=functools.partial(
            synthetic.synthetic_loss, finder_kind, model, aug_config=aug, uda_config=uda))

    def init_meta(rng):
        if cfg.meta_target == "generator":
            params = generator.params
        else:
            params = finder.init(rng, jnp.zeros((1,) + tuple(generator.latent_shape)))
        return {"params": params, "opt": ctx.meta_tx.init(params)}
    if cfg.meta_target == "generator":
        frozen = {}
    return Method(_with_step_key(functools.partial(mps_step, ctx=ctx)), init_meta, frozen,
                  needs_val=cfg.finder_update == "meta")


def _feature_dim(model, image_size):
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               jnp.zeros((1, image_size, image_size, 3))))
    return shapes["params"]["fc"]["kernel"].shape[0]
