"""Algorithm 1 (MPS, the methods gda_mps and mgr): `mps_step` as its three steps,
`meta_gradient`, `update_finder` and `real_step`, and `between_step` for the steps between two
meta-updates (`mps.update_every > 1`). `MPSContext` is what they need; `methods.build_method`
makes it.
"""
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mgr_jax import classifier, hypergrad, losses, uniform_steps
from mgr_jax.finder import Finder
from mgr_jax.method_settings import MPSSettings


@dataclasses.dataclass(frozen=True)
class MPSContext:
    """What Algorithm 1 adds: the MPS settings, the finder and its optimiser, the classifier
    the finite-difference hypergradient evaluates L_syn with, the Table 7 ablation's loss."""
    uniform: uniform_steps.UniformContext
    mps: MPSSettings
    finder: Finder
    meta_tx: Any
    fd_model: Any  # the float32 twin of a narrower classifier, else the classifier
    finder_loss: Callable = None  # (params, batch_stats, x01, y, key) -> what F maximises


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
    state, metrics = uniform_steps.uniform_update(state, batch, ctx.uniform, gen_params, w, y,
                                                  k_aug)
    metrics.update(_latent_metrics(ctx.mps, z, w))
    return state, metrics


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
    real = jax.value_and_grad(uniform_steps.real_ce(ctx.uniform.model, state, batch), has_aux=True)
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
    val_ce = uniform_steps.val_ce(ctx.uniform.model, state, step.batch)
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
        after = uniform_steps.val_ce(ctx.uniform.model, state, step.batch)(
            _virtual(state.params, g_ce, g_syn, step.eta))
        metrics.update(meta_loss_after=after, meta_descent=after - metrics["meta_loss"],
                       meta_descended=(after < metrics["meta_loss"]).astype(jnp.float32))
    grads = jax.tree.map(jnp.add, g_ce, g_syn)
    lam = ctx.uniform.lam
    metrics.update(loss=ce + syn, ce=ce, syn=syn / jnp.maximum(lam, 1e-12),
                   accuracy=uniform_steps.accuracy(logits, step.batch["label"]), lr=step.eta,
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
