"""Synthetic samples x_p = resize(G(F(z), y_p)) and the synthetic-sample losses L_syn.

Each L_syn is a pure function of the classifier params and the [0, 1] synthetic images; the
classifier runs in train mode (batch statistics) and its running-statistic updates are
discarded: running statistics follow the real data only, which is what evaluation sees.
"""
import jax
import jax.numpy as jnp

from mgr_jax import losses, synthetic_augment
from mgr_jax.data import protocol

LOSSES = ("gda", "gda_mh", "gda_ssl", "pcr")


def draw_latents(key, generator, batch_size, num_classes):
    """z ~ N(0, I) of the generator's latent shape and y_p uniform over the classes."""
    k_z, k_y = jax.random.split(key)
    z = jax.random.normal(k_z, (batch_size,) + tuple(generator.latent_shape))
    y = jax.random.randint(k_y, (batch_size,), 0, max(num_classes, 1))
    return z, y


def synthesize(generator, gen_params, w, labels, image_size):
    """[0, 1] NHWC images at the classifier's resolution from latents w = F(z).

    The resize is differentiable (jax.image.resize), so MPS can backpropagate to w.
    """
    images = generator.sample(gen_params, w, labels).astype(jnp.float32)
    if images.shape[1] != image_size or images.shape[2] != image_size:
        images = jax.image.resize(images, (images.shape[0], image_size, image_size,
                                           images.shape[-1]), "bilinear")
    if images.shape[-1] == 1:
        images = jnp.repeat(images, 3, axis=-1)
    return jnp.clip((images + 1.0) / 2.0, 0.0, 1.0)


def _forward(model, params, batch_stats, images01):
    """Train-mode classifier on [0, 1] images: (logits, features); stats updates dropped."""
    (logits, feats), _ = model.apply({"params": params, "batch_stats": batch_stats},
                                     protocol.normalize(images01), train=True,
                                     mutable=["batch_stats"])
    return logits, feats


def synthetic_loss(kind, model, params, batch_stats, images01, labels, key, *, aux_head=None,
                   aug_config=None, uda_config=None):
    """L_syn of a method (unweighted): gda CE, gda_mh second-head CE, gda_ssl UDA, pcr PCR."""
    strong = lambda: synthetic_augment.rand_augment(key, images01, **(aug_config or {}))  # noqa: E731
    if kind == "gda":
        logits, _ = _forward(model, params, batch_stats, images01)
        return losses.cross_entropy(logits, labels)
    if kind == "gda_mh":
        _, feats = _forward(model, params, batch_stats, images01)
        return losses.multi_head_gda_loss(aux_head(feats), labels)
    if kind == "gda_ssl":
        weak, _ = _forward(model, params, batch_stats, images01)
        strong_logits, _ = _forward(model, params, batch_stats, strong())
        return losses.uda_loss(weak, strong_logits, **(uda_config or {}))
    if kind == "pcr":
        _, feats = _forward(model, params, batch_stats, images01)
        _, feats_aug = _forward(model, params, batch_stats, strong())
        return losses.pcr_loss(feats_aug, feats)
    raise ValueError(f"unknown synthetic loss {kind!r}; choose one of {LOSSES}")
