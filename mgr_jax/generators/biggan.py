"""BigGAN as a `Generator`: sample(params, z, labels) -> NHWC images in [-1, 1] (eval mode).

The network is `mgr_jax.models.biggan.BigGAN`; `converters.biggan` reads the official files.
"""
import os

import jax.numpy as jnp

from converters import biggan as conv
from mgr_jax.generators import base


def make_sample_fn(module):
    """sample(params, z, labels, rng=None) -> clipped NHWC images; params = the variables."""
    def sample(params, z, labels, rng=None):
        """z (N, latent_dim), labels (N,) int -> (N, res, res, 3) in [-1, 1], eval mode."""
        del rng  # BigGAN has no noise inputs; accepted for a signature common to all kinds
        return jnp.clip(module.apply(params, z, labels, train=False), -1.0, 1.0)
    return sample


def load(checkpoint, **kwargs):
    """Generic interface: a BigGAN .pth (with constructor kwargs) or a converted directory.

    `checkpoint` is either a directory written by `python -m converters.biggan` or an official
    G_ema.pth / G.pth state_dict (kwargs are then the official Generator keywords, or
    kwargs_json=...). Returns a `base.Generator` whose params are the variables pytree.
    """
    if os.path.isdir(checkpoint):
        module, variables = conv.load_converted(checkpoint)
    else:
        module, variables = conv.convert(checkpoint, **kwargs)
    return base.Generator(
        sample=make_sample_fn(module), params=variables, latent_shape=(module.latent_dim,),
        num_classes=module.n_classes, resolution=module.resolution, kind="biggan")

