"""Losses of the paper, each a small pure jittable function named after its equation."""
import jax
import jax.numpy as jnp


def cross_entropy(logits, labels):
    """Softmax cross-entropy, batch mean (Eq. 1): logits (N, C), integer labels (N,)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=1))


def pcr_loss(features_aug, features):
    """Pseudo consistency regularisation, Eq. 5-6: mean over x of ||g(T(x)) - g(x)||_2^2.

    features_aug, features: (N, D) = g(T(x_p)), g(x_p). Gradients flow through both branches,
    as Eq. 5 is written (no stop-gradient on either side).
    """
    diff = features_aug.astype(jnp.float32) - features.astype(jnp.float32)
    return jnp.mean(jnp.sum(jnp.square(diff), axis=-1))


def kl_penalty(w):
    """KL penalty of Eq. 11 on finder outputs w = F(z), (N, d).

    With mu, var the per-dimension batch mean and (biased) variance of w:
    KL = mean over dims of -1/2 (1 + log var - mu^2 - var), i.e. KL(N(mu, var) || N(0, 1)).
    """
    w = w.astype(jnp.float32)
    mu = jnp.mean(w, axis=0)
    var = jnp.var(w, axis=0)
    return jnp.mean(-0.5 * (1.0 + jnp.log(var + 1e-12) - jnp.square(mu) - var))


def uda_loss(logits_weak, logits_strong, temperature=0.4, threshold=0.8):
    """UDA consistency (GDA+SSL): KL(sharpen(p_weak) || p_strong) on confident samples.

    p_weak = softmax(logits_weak) decides the mask (max prob > threshold); the target is
    softmax(logits_weak / temperature) with stop-gradient. Mean over the whole batch, masked
    samples count as 0 (so the loss is 0 when no sample passes). Shapes (N, C), (N, C).
    """
    logits_weak = jax.lax.stop_gradient(logits_weak.astype(jnp.float32))
    confident = jnp.max(jax.nn.softmax(logits_weak), axis=-1) > threshold
    target_logp = jax.nn.log_softmax(logits_weak / temperature)
    strong_logp = jax.nn.log_softmax(logits_strong.astype(jnp.float32))
    kl = jnp.sum(jnp.exp(target_logp) * (target_logp - strong_logp), axis=-1)
    return jnp.mean(jnp.where(confident, kl, 0.0))


def multi_head_gda_loss(aux_logits, labels):
    """Multi-head GDA: CE of a second head h' on g(x_p) against the sampled labels y_p."""
    return cross_entropy(aux_logits, labels)
