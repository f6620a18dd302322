"""StyleGAN2-ADA training in JAX: losses, lazy regularisation, EMA and the jitted iteration.

One iteration follows the official training loop's phases, in its order:
  1. G main: non-saturating logistic loss softplus(-D(aug(G(z, c)), c)), style mixing,
     random noise inputs; G's w_avg tracked as the official mapping does (beta 0.995).
  2. G reg (every `pl_interval` iterations, only when pl_weight > 0): path-length penalty on a
     batch shrunk by `pl_batch_shrink`, times the interval.
  3. D main: softplus(D(aug(G(z, c)))) + softplus(-D(aug(x), c_x)), G's images held fixed.
  4. D reg (every `r1_interval` iterations): R1 = gamma/2 * ||grad_x D(aug(x), c_x)||^2 on
     reals, times the interval; the gradient is taken with respect to the un-augmented x.
  5. EMA of G: beta = 0.5 ** (batch / ema_nimg), ema_nimg = min(ema_kimg * 1000,
     nimg * ema_rampup); buffers (w_avg, noise constants) are copied, as the official G_ema.
Adam (betas (0, 0.99), eps 1e-8) with the lazy-regularisation correction of the official code:
a network regularised every k iterations uses lr * k/(k+1) and betas ** (k/(k+1)).

Everything is a pure function of (state, batch, rng); the iteration folds `state.step` into
the run's key, so a resumed run draws exactly what an uninterrupted one would.
"""
import functools
import json
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mgr_jax.gan import diffaugment
from mgr_jax.models import stylegan2
from mgr_jax.models.stylegan2 import discriminator as stylegan2_disc


class GANState(flax.struct.PyTreeNode):
    """Everything an iteration changes."""
    step: jax.Array  # iterations done
    g_vars: Any  # G's {"params", "buffers"} (buffers: w_avg, noise constants)
    d_params: Any
    g_opt: Any
    d_opt: Any
    ema: Any  # G_ema's {"params", "buffers"}
    pl_mean: jax.Array  # running mean of path lengths (path-length regularisation)


def _none_if_zero(value):
    return None if not value else value


def create_models(config, num_classes):
    """(G, D) Flax modules from `config.generator` / `config.discriminator`."""
    g, d = config.generator, config.discriminator
    G = stylegan2.Generator(
        z_dim=g.z_dim, c_dim=num_classes, w_dim=g.w_dim, img_resolution=g.resolution,
        img_channels=g.img_channels, mapping_layers=g.mapping_layers,
        channel_base=g.channel_base, channel_max=g.channel_max, architecture=g.architecture,
        conv_clamp=_none_if_zero(g.conv_clamp))
    D = stylegan2_disc.Discriminator(
        c_dim=num_classes, img_resolution=g.resolution, img_channels=g.img_channels,
        architecture=d.architecture, channel_base=d.channel_base, channel_max=d.channel_max,
        cmap_dim=_none_if_zero(d.cmap_dim), mapping_layers=d.mapping_layers,
        conv_clamp=_none_if_zero(d.conv_clamp), mbstd_group_size=d.mbstd_group_size,
        mbstd_num_channels=d.mbstd_num_channels)
    return G, D


def discriminator_variables(D, seed):
    """D's initial params, drawn with numpy from a seed as the official init: weights N(0, 1)
    (divided by the lr multiplier in the mapping layers), biases 0."""
    c = jnp.zeros((1, D.c_dim)) if D.c_dim > 0 else None
    img = jnp.zeros((1, D.img_resolution, D.img_resolution, D.img_channels))
    shapes = jax.eval_shape(lambda k: D.init(k, img, c), jax.random.key(seed))
    rng = np.random.default_rng(seed)

    def draw(path, spec):
        names = [p.key for p in path]
        if names[-1] == "bias":
            return jnp.zeros(spec.shape, spec.dtype)
        value = rng.standard_normal(spec.shape)
        if names[1] == "mapping" and names[2].startswith("fc"):
            value = value / 0.01  # lr_multiplier of the conditioning mapping
        return jnp.asarray(value, spec.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)["params"]


def lazy_adam(lr, betas, eps, reg_interval=None):
    """Adam as torch's, with the official lazy-regularisation correction when regularised
    every `reg_interval` iterations: lr * r and betas ** r, r = k / (k + 1)."""
    ratio = reg_interval / (reg_interval + 1) if reg_interval else 1.0
    return optax.adam(lr * ratio, b1=betas[0] ** ratio, b2=betas[1] ** ratio, eps=eps)


def create_optimizers(config):
    """(G's, D's) optax transforms; G is corrected only when path-length reg is on.

    The official loop also scales G's Adam by 4/5 when pl_weight is 0 (its G reg phase then
    computes nothing); here a network without a regulariser keeps the plain settings.
    """
    opt, loss = config.optimizer, config.loss
    betas = tuple(opt.betas)
    g_tx = lazy_adam(opt.g_lr, betas, opt.eps,
                     loss.pl_interval if loss.pl_weight > 0 else None)
    d_tx = lazy_adam(opt.d_lr, betas, opt.eps, loss.r1_interval if loss.r1_gamma > 0 else None)
    return g_tx, d_tx


def create_state(config, G, D, g_tx, d_tx):
    """Initial GANState from config.seed (numpy draws: no XLA init compile).

    Committed to the first device, as the steps' outputs and a restored checkpoint are: a jit
    compiles again for arguments that differ only in being committed, so a fresh state would
    cost each step one more compilation on its second call and on every resume.
    """
    g_vars = stylegan2.random_variables(G, config.seed)
    d_params = discriminator_variables(D, config.seed + 1)
    state = GANState(step=jnp.zeros((), jnp.int32), g_vars=g_vars, d_params=d_params,
                     g_opt=g_tx.init(g_vars["params"]), d_opt=d_tx.init(d_params),
                     ema=jax.tree.map(jnp.array, g_vars), pl_mean=jnp.zeros((), jnp.float32))
    return jax.device_put(state, jax.devices()[0])


# ----------------------------------------------------------------------------- losses

def r1_penalty(score_fn, images):
    """||grad_x sum score_fn(x)||^2 per sample: (N, ...) -> (N,). score_fn maps (N, ...) to
    (N,) or (N, 1) scores, each depending only on its own sample (true for D in eval use; the
    minibatch-std layer couples samples, as in the official code, which does the same)."""
    grads = jax.grad(lambda x: jnp.sum(score_fn(x)))(images)
    return jnp.sum(jnp.square(grads), axis=tuple(range(1, grads.ndim)))


def ema_beta(nimg, batch_size, ema_kimg, ema_rampup):
    """Official G_ema decay for the iteration that starts after `nimg` images."""
    ema_nimg = ema_kimg * 1000.0
    if ema_rampup:
        ema_nimg = jnp.minimum(ema_nimg, nimg * ema_rampup)
    return 0.5 ** (batch_size / jnp.maximum(ema_nimg, 1e-8))


def ema_update(ema, new, beta):
    """ema <- new + beta * (ema - new) (torch `new.lerp(ema, beta)`), leaf-wise."""
    return jax.tree.map(lambda e, p: p + beta * (e - p), ema, new)


def _nan_to_num(tree):
    """The official training loop's guard on gradients before each optimiser step."""
    return jax.tree.map(lambda g: jnp.nan_to_num(g, nan=0.0, posinf=1e5, neginf=-1e5), tree)


# ----------------------------------------------------------------------------- networks

def mapping_with_mixing(G, g_vars, z, c, key, mixing_prob):
    """ws (N, num_ws, w_dim) with official style mixing: with probability `mixing_prob` the ws
    from index `cutoff` ~ U{1..num_ws-1} on come from a second z (same c). Also returns the
    batch mean of the first mapping's w, for the w_avg update."""
    ws = G.apply(g_vars, z, c, method="mapping")
    w_mean = jnp.mean(ws[:, 0], axis=0)
    num_ws = ws.shape[1]
    if mixing_prob > 0 and num_ws > 1:
        k_cut, k_prob, k_z = jax.random.split(key, 3)
        cutoff = jax.random.randint(k_cut, (), 1, num_ws)
        cutoff = jnp.where(jax.random.uniform(k_prob) < mixing_prob, cutoff, num_ws)
        ws2 = G.apply(g_vars, jax.random.normal(k_z, z.shape), c, method="mapping")
        ws = jnp.where(jnp.arange(num_ws)[None, :, None] >= cutoff, ws2, ws)
    return ws, jax.lax.stop_gradient(w_mean)


def _update_w_avg(g_vars, w_mean, beta=0.995):
    """w_avg <- w_mean + beta * (w_avg - w_mean), the official mapping's training update."""
    buffers = dict(g_vars["buffers"])
    mapping = dict(buffers["mapping"])
    mapping["w_avg"] = w_mean + beta * (mapping["w_avg"] - w_mean)
    buffers["mapping"] = mapping
    return {**g_vars, "buffers": buffers}


def _latents(key, batch_size, z_dim, num_classes):
    """z ~ N(0, I) and one-hot c uniform over the classes (None when unconditional)."""
    k_z, k_c = jax.random.split(key)
    z = jax.random.normal(k_z, (batch_size, z_dim))
    if num_classes == 0:
        return z, None
    labels = jax.random.randint(k_c, (batch_size,), 0, num_classes)
    return z, jax.nn.one_hot(labels, num_classes)


# ----------------------------------------------------------------------------- iteration

def train_step(state, batch, rng, *, G, D, g_tx, d_tx, config, do_r1=False, do_pl=False):
    """One training iteration (module docstring). batch: {"image" (B, R, R, C) in [-1, 1],
    "label" (B,) int}. Returns (state, metrics); metrics are scalars."""
    loss_cfg, aug_cfg = config.loss, config.augment
    policy = diffaugment.parse_policy(aug_cfg.policy)
    num_classes = G.c_dim
    batch_size = batch["image"].shape[0]
    augment = functools.partial(diffaugment.diff_augment, policy=policy,
                                translation_ratio=aug_cfg.translation_ratio,
                                cutout_ratio=aug_cfg.cutout_ratio)
    real = batch["image"].astype(jnp.float32)
    real_c = jax.nn.one_hot(batch["label"], num_classes) if num_classes > 0 else None
    key = jax.random.fold_in(rng, state.step)
    k_g, k_pl, k_d, k_r1 = jax.random.split(key, 4)

    def generate(g_params, g_vars, key, n):
        k_lat, k_mix, k_noise = jax.random.split(key, 3)
        z, c = _latents(k_lat, n, G.z_dim, num_classes)
        variables = {**g_vars, "params": g_params}
        ws, w_mean = mapping_with_mixing(G, variables, z, c, k_mix, loss_cfg.style_mixing_prob)
        img = G.apply(variables, ws, noise_mode="random", method="synthesis",
                      rngs={"noise": k_noise})
        return img, c, ws, w_mean

    def score(d_params, img, c, key):
        return D.apply({"params": d_params}, augment(key, img), c)[:, 0]

    # G main.
    def g_main_loss(g_params):
        k_gen, k_aug = jax.random.split(k_g)
        img, c, _, w_mean = generate(g_params, state.g_vars, k_gen, batch_size)
        logits = score(state.d_params, img, c, k_aug)
        return jnp.mean(jax.nn.softplus(-logits)), (w_mean, jnp.mean(logits))

    (g_loss, (w_mean, fake_score_g)), g_grads = jax.value_and_grad(
        g_main_loss, has_aux=True)(state.g_vars["params"])
    g_updates, g_opt = g_tx.update(_nan_to_num(g_grads), state.g_opt, state.g_vars["params"])
    g_vars = _update_w_avg({**state.g_vars,
                            "params": optax.apply_updates(state.g_vars["params"], g_updates)},
                           w_mean)
    metrics = {"g_loss": g_loss, "fake_score_g": fake_score_g}

    # G reg: path-length penalty.
    pl_mean = state.pl_mean
    if do_pl:
        n_pl = max(batch_size // loss_cfg.pl_batch_shrink, 1)

        def g_pl_loss(g_params):
            k_gen, k_noise = jax.random.split(k_pl)
            k_lat, k_mix, k_synth = jax.random.split(k_gen, 3)
            z, c = _latents(k_lat, n_pl, G.z_dim, num_classes)
            variables = {**g_vars, "params": g_params}
            ws, w_mean = mapping_with_mixing(G, variables, z, c, k_mix,
                                             loss_cfg.style_mixing_prob)
            res = G.img_resolution
            noise = jax.random.normal(k_noise, (n_pl, res, res, G.img_channels)) / res

            def project(ws):
                img = G.apply(variables, ws, noise_mode="random", method="synthesis",
                              rngs={"noise": k_synth})
                return jnp.sum(img * noise)

            grads = jax.grad(project)(ws)
            lengths = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grads), axis=2), axis=1))
            new_mean = pl_mean + loss_cfg.pl_decay * (jnp.mean(lengths) - pl_mean)
            penalty = jnp.square(lengths - jax.lax.stop_gradient(new_mean))
            loss = jnp.mean(penalty * loss_cfg.pl_weight) * loss_cfg.pl_interval
            return loss, (jax.lax.stop_gradient(new_mean), jnp.mean(penalty), w_mean)

        (_, (pl_mean, pl_penalty, w_mean)), pl_grads = jax.value_and_grad(
            g_pl_loss, has_aux=True)(g_vars["params"])
        g_updates, g_opt = g_tx.update(_nan_to_num(pl_grads), g_opt, g_vars["params"])
        g_vars = _update_w_avg(
            {**g_vars, "params": optax.apply_updates(g_vars["params"], g_updates)}, w_mean)
        metrics["pl_penalty"] = pl_penalty

    # D main, with the updated G.
    k_gen, k_aug_fake, k_aug_real = jax.random.split(k_d, 3)
    fake, fake_c, _, w_mean = generate(g_vars["params"], g_vars, k_gen, batch_size)
    fake = jax.lax.stop_gradient(fake)
    g_vars = _update_w_avg(g_vars, w_mean)

    def d_main_loss(d_params):
        fake_logits = score(d_params, fake, fake_c, k_aug_fake)
        real_logits = score(d_params, real, real_c, k_aug_real)
        loss = jnp.mean(jax.nn.softplus(fake_logits)) + jnp.mean(jax.nn.softplus(-real_logits))
        return loss, (jnp.mean(fake_logits), jnp.mean(real_logits))

    (d_loss, (fake_score, real_score)), d_grads = jax.value_and_grad(
        d_main_loss, has_aux=True)(state.d_params)
    d_updates, d_opt = d_tx.update(_nan_to_num(d_grads), state.d_opt, state.d_params)
    d_params = optax.apply_updates(state.d_params, d_updates)
    metrics.update(d_loss=d_loss, fake_score=fake_score, real_score=real_score)

    # D reg: lazy R1 on the reals.
    if do_r1:
        def d_r1_loss(d_params):
            penalty = r1_penalty(lambda x: score(d_params, x, real_c, k_r1), real)
            return jnp.mean(penalty * (loss_cfg.r1_gamma / 2)) * loss_cfg.r1_interval, \
                jnp.mean(penalty)

        (_, r1), r1_grads = jax.value_and_grad(d_r1_loss, has_aux=True)(d_params)
        d_updates, d_opt = d_tx.update(_nan_to_num(r1_grads), d_opt, d_params)
        d_params = optax.apply_updates(d_params, d_updates)
        metrics["r1_penalty"] = r1

    # G_ema.
    beta = ema_beta(state.step.astype(jnp.float32) * batch_size, batch_size, config.ema_kimg,
                    config.ema_rampup)
    ema = {**g_vars, "params": ema_update(state.ema["params"], g_vars["params"], beta)}
    new_state = state.replace(step=state.step + 1, g_vars=g_vars, d_params=d_params,
                              g_opt=g_opt, d_opt=d_opt, ema=ema, pl_mean=pl_mean)
    return new_state, metrics


def step_kind(step, config):
    """(do_r1, do_pl) of iteration `step` (0-based): official lazy intervals (step % k == 0)."""
    loss = config.loss
    do_r1 = loss.r1_gamma > 0 and step % loss.r1_interval == 0
    do_pl = loss.pl_weight > 0 and step % loss.pl_interval == 0
    return bool(do_r1), bool(do_pl)


def jit_train_steps(G, D, g_tx, d_tx, config):
    """{(do_r1, do_pl): jitted step(state, batch, rng)} with the state donated.

    The steps run G with `upsample_impl="fir_first"`: the same function and variables, with a
    weight gradient that XLA:CPU computes far faster (`models.stylegan2.ops.conv2d_resample`).
    """
    G_train = G.clone(upsample_impl="fir_first")
    return {(r1, pl): jax.jit(
        functools.partial(train_step, G=G_train, D=D, g_tx=g_tx, d_tx=d_tx, config=config,
                          do_r1=r1, do_pl=pl), donate_argnums=(0,))
            for r1 in (False, True) for pl in (False, True)}


@functools.lru_cache(maxsize=8)
def _build_cached(config_json, num_classes):
    config = ml_collections.ConfigDict(json.loads(config_json))
    G, D = create_models(config, num_classes)
    g_tx, d_tx = create_optimizers(config)
    return G, D, g_tx, d_tx, jit_train_steps(G, D, g_tx, d_tx, config)


def build(config, num_classes):
    """(G, D, g_tx, d_tx, steps) for a config; cached on the config's JSON, so runs of one
    config in one process (a resumed run, tests) reuse the compiled programs."""
    return _build_cached(config.to_json(sort_keys=True), int(num_classes))


def kimg(step, batch_size):
    """Thousands of real images shown after `step` iterations."""
    return step * batch_size / 1000.0


def steps_for_kimg(kimg_value, batch_size):
    """Iterations needed to show `kimg_value` thousand images (rounded up)."""
    return int(math.ceil(kimg_value * 1000.0 / batch_size - 1e-9))
