"""Losses of the paper, each a small pure jittable function named after its equation.

Every loss checks its inputs' ranks and shapes when it is traced (shapes are static under
jax.jit, so a bad call fails before anything runs, with a ValueError naming the argument).
Floating inputs are computed in at least float32: bfloat16 / float16 are promoted to
float32, float64 (with jax_enable_x64) stays float64. Each returns a scalar of that dtype.
"""
import jax
import jax.numpy as jnp


def _float(x):
    """x as an array of at least float32 precision (float64 stays float64)."""
    x = jnp.asarray(x)
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    return x if x.dtype == dtype else x.astype(dtype)


def _check_rank2(fn, name, x, what):
    if jnp.ndim(x) != 2:
        raise ValueError(f"{fn}: {name} must be {what}, rank 2; got shape {jnp.shape(x)}")


def _check_same_shape(fn, names, a, b):
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(f"{fn}: {names[0]} {jnp.shape(a)} and {names[1]} {jnp.shape(b)} must "
                         "have the same shape (nothing is broadcast)")


def cross_entropy(logits, labels):
    """Softmax cross-entropy, batch mean (Eq. 1): logits (N, C) float, labels (N,) integer."""
    _check_rank2("cross_entropy", "logits", logits, "(N, C)")
    if jnp.shape(labels) != jnp.shape(logits)[:1]:
        raise ValueError(f"cross_entropy: labels must be (N,) = ({jnp.shape(logits)[0]},) "
                         f"integer class indices; got shape {jnp.shape(labels)}")
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise ValueError(f"cross_entropy: labels must be integer class indices, got "
                         f"{jnp.result_type(labels)} (one-hot or soft labels are not taken)")
    logp = jax.nn.log_softmax(_float(logits))
    return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(labels)[:, None].astype(jnp.int32),
                                         axis=1))


def pcr_loss(features_aug, features):
    """Pseudo consistency regularisation, Eq. 5-6: mean over x of ||g(T(x)) - g(x)||_2^2.

    features_aug, features: (N, D) = g(T(x_p)), g(x_p), the same shape (feature maps must be
    pooled first). Gradients flow through both branches, as Eq. 5 is written (no
    stop-gradient on either side).
    """
    _check_rank2("pcr_loss", "features_aug", features_aug, "(N, D) pooled features")
    _check_rank2("pcr_loss", "features", features, "(N, D) pooled features")
    _check_same_shape("pcr_loss", ("features_aug", "features"), features_aug, features)
    diff = _float(features_aug) - _float(features)
    return jnp.mean(jnp.sum(jnp.square(diff), axis=-1))


def kl_penalty(w):
    """KL penalty of Eq. 11 on finder outputs w = F(z), (N, d) with N >= 2.

    With mu, var the per-dimension batch mean and (biased) variance of w:
    KL = mean over dims of -1/2 (1 + log var - mu^2 - var), i.e. KL(N(mu, var) || N(0, 1)).
    A batch of one has no variance: refused (ValueError), rather than the log of the 1e-12
    floor that keeps log var finite for a constant dimension.
    """
    _check_rank2("kl_penalty", "w", w, "(N, d) finder outputs (flatten each latent)")
    if jnp.shape(w)[0] < 2:
        raise ValueError(f"kl_penalty: needs at least two samples for a variance; got w of "
                         f"shape {jnp.shape(w)}")
    w = _float(w)
    mu = jnp.mean(w, axis=0)
    var = jnp.var(w, axis=0)
    return jnp.mean(-0.5 * (1.0 + jnp.log(var + 1e-12) - jnp.square(mu) - var))


def uda_loss(logits_weak, logits_strong, temperature=0.4, threshold=0.8):
    """UDA consistency (GDA+SSL): KL(sharpen(p_weak) || p_strong) on confident samples.

    p_weak = softmax(logits_weak) decides the mask (max prob > threshold); the target is
    softmax(logits_weak / temperature) with stop-gradient. Mean over the whole batch, masked
    samples count as 0 (so the loss is 0 when no sample passes). Shapes (N, C), (N, C).
    """
    _check_rank2("uda_loss", "logits_weak", logits_weak, "(N, C)")
    _check_rank2("uda_loss", "logits_strong", logits_strong, "(N, C)")
    _check_same_shape("uda_loss", ("logits_weak", "logits_strong"), logits_weak, logits_strong)
    logits_weak = jax.lax.stop_gradient(_float(logits_weak))
    confident = jnp.max(jax.nn.softmax(logits_weak), axis=-1) > threshold
    target_logp = jax.nn.log_softmax(logits_weak / temperature)
    strong_logp = jax.nn.log_softmax(_float(logits_strong))
    kl = jnp.sum(jnp.exp(target_logp) * (target_logp - strong_logp), axis=-1)
    return jnp.mean(jnp.where(confident, kl, 0.0))


def multi_head_gda_loss(aux_logits, labels):
    """Multi-head GDA: CE of a second head h' on g(x_p) against the sampled labels y_p."""
    return cross_entropy(aux_logits, labels)
