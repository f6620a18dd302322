"""Synthetic samples x_p = resize(G(F(z), y_p)), and the classifier's outputs on them.

The losses on those outputs are the registered regularisers' (`mgr_jax.regularisers`);
`synthetic_loss` evaluates one outside a method's step. The classifier runs in train mode
(batch statistics) and its running-statistic updates are discarded: running statistics follow
the real data only, which is what evaluation sees. Images reach the classifier through its own
normalisation (`contract.Classifier.normalize`), the one that real batches are given in.
"""
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np

from mgr_jax import contract, regularisers, synthetic_augment

# ITU-R BT.601 luma: RGB generator images for a one-channel classifier.
LUMA = (0.299, 0.587, 0.114)


def draw_latents(key, generator, batch_size, num_classes):
    """z ~ N(0, I) (batch_size, *latent_shape) float32 and y_p (batch_size,) int32 uniform
    over the classes."""
    k_z, k_y = jax.random.split(key)
    z = jax.random.normal(k_z, (batch_size,) + tuple(generator.latent_shape))
    y = jax.random.randint(k_y, (batch_size,), 0, max(num_classes, 1))
    return z, y


def match_channels(images, channels):
    """(N, H, W, c) -> (N, H, W, channels): as is when equal, a grey image repeated, RGB to
    luma for one channel; any other pair is refused (ValueError, at trace time)."""
    have = images.shape[-1]
    if have == channels:
        return images
    if have == 1:
        return jnp.repeat(images, channels, axis=-1)
    if have == 3 and channels == 1:
        return jnp.tensordot(images, jnp.asarray(LUMA, images.dtype), axes=[[-1], [0]])[..., None]
    raise ValueError(f"the generator makes {have}-channel images and the classifier takes "
                     f"{channels} channels: only equal counts, 1 -> any and 3 -> 1 are mapped")


@functools.lru_cache(maxsize=64)
def bilinear_weights(size_in, size_out):
    """(size_out, size_in) float32 matrix of `jax.image.resize`'s "bilinear" along one axis:
    half-pixel centres, a triangle kernel widened by in/out when shrinking (antialiasing),
    each row normalised to sum 1. Computed in float64 with numpy: a constant of the program."""
    scale = size_out / size_in
    centres = (np.arange(size_out) + 0.5) / scale - 0.5
    w = np.maximum(0.0, 1.0 - np.abs(np.arange(size_in)[None, :] - centres[:, None])
                   * min(scale, 1.0))
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def resize_bilinear(images, height, width):
    """(N, h, w, C) -> (N, height, width, C), `jax.image.resize(..., "bilinear")` (to float32
    round-off) as two matrix products on channel-first images.

    jax.image.resize contracts the channel-last layout, and XLA's GPU compiler (Triton GEMM)
    refuses that dot for shapes such as 256 -> 224 with "Couldn't find output tile sizes"; with
    the spatial axis minor-most the dots compile for GPU and TPU, forward and differentiated.
    """
    x = jnp.transpose(images, (0, 3, 1, 2))  # N C h w
    hp = jax.lax.Precision.HIGHEST  # as jax.image.resize: no TF32 / bf16 passes
    x = jnp.einsum("nchw,pw->nchp", x, bilinear_weights(images.shape[2], width), precision=hp)
    x = jnp.einsum("nchp,oh->ncop", x, bilinear_weights(images.shape[1], height), precision=hp)
    return jnp.transpose(x, (0, 2, 3, 1))


def synthesize(generator, gen_params, w, labels, image_size, channels=3):
    """[0, 1] NHWC float32 images at the classifier's input size from latents w = F(z).

    image_size: int (square) or (H, W); channels: the classifier's channel count (see
    `match_channels`). The resize is differentiable (`resize_bilinear`), so MPS can
    backpropagate to w. w (N, *latent_shape), labels (N,) int.
    """
    height, width = contract.input_shape_of(image_size)[:2]
    images = generator.sample(gen_params, w, labels).astype(jnp.float32)
    if images.shape[1] != height or images.shape[2] != width:
        images = resize_bilinear(images, height, width)
    images = match_channels(images, channels)
    # A NaN or inf from the generator stays NaN (clipping would hide inf, and XLA's min/max
    # may drop NaN on some backends): the losses then become NaN and the run stops (status 3).
    return jnp.where(jnp.isfinite(images), jnp.clip((images + 1.0) / 2.0, 0.0, 1.0), jnp.nan)


def train_mode_outputs(model, params, batch_stats, images01):
    """Train-mode classifier on [0, 1] images: (logits, features); stats updates dropped."""
    clf = contract.as_classifier(model)
    logits, feats, _ = clf.forward(params, batch_stats, clf.prepare(images01), True)
    return logits, feats


def synthetic_loss(kind, model, params, batch_stats, images01, labels, key, *, aux_head=None,
                   aug_config=None, uda_config=None):
    """L_syn of a registered regulariser (unweighted), e.g. gda CE, gda_mh second-head CE,
    gda_ssl UDA, pcr PCR (`mgr_jax.regularisers`), outside a method's step.

    model: a `contract.Classifier` or a bare module following the contract; images01
    (N, H, W, C) in [0, 1]; labels (N,) int; key: the augmentation's PRNG key; aux_head:
    features (N, D) -> logits (gda_mh only); aug_config: `rand_augment`'s keywords;
    uda_config: `losses.uda_loss`'s. Returns a scalar.
    """
    reg = regularisers.registered().get(kind)
    if reg is None:
        raise ValueError(f"unknown synthetic loss {kind!r}; choose one of "
                         f"{list(regularisers.registered())}")
    uda = {"temperature": 0.4, "threshold": 0.8, **(uda_config or {})}
    inputs = regularisers.LossInputs(
        forward=lambda x: train_mode_outputs(model, params, batch_stats, x), images=images01,
        labels=labels, key=key, head=aux_head, settings=reg.settings,
        strong=lambda x, k: synthetic_augment.rand_augment(k, x, **(aug_config or {})),
        synthetic=types.SimpleNamespace(uda_temperature=uda["temperature"],
                                        uda_threshold=uda["threshold"]))
    return reg.loss(inputs)
