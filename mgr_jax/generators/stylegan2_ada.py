"""StyleGAN2-ADA as a `Generator`: sample(params, z, labels) -> NHWC images in [-1, 1].

`load` takes a converted directory (`python -m converters.stylegan2_ada in.pkl OUT`) or an
official `network-snapshot-*.pkl` directly; labels are int class indices, one-hot encoded here.
"""
import os

import jax
import jax.numpy as jnp

from converters import stylegan2_ada as converter
from mgr_jax.generators import base
from mgr_jax.generators.base import Generator

KIND = "stylegan2_ada"


def from_module(module, variables, truncation_psi=1.0, truncation_cutoff=None,
                noise_mode="const"):
    """Wrap a `models.stylegan2.Generator` and its variables as a `Generator`."""
    if noise_mode not in ("const", "random", "none"):
        raise ValueError(f"noise_mode must be const, random or none, got {noise_mode!r}")
    base.check_truncation(truncation_psi, truncation_cutoff)
    num_classes = int(module.c_dim)

    def sample(params, z, labels, rng=None):
        """z (N, z_dim), labels int (N,) -> (N, R, R, C) in [-1, 1]; rng for noise 'random'."""
        c = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) if num_classes > 0 else None
        rngs = None
        if noise_mode == "random":
            if rng is None:
                raise ValueError("noise_mode 'random' needs an explicit key: sample(..., rng=key)")
            rngs = {"noise": rng}
        img = module.apply(params, z, c, truncation_psi=truncation_psi,
                           truncation_cutoff=truncation_cutoff, noise_mode=noise_mode, rngs=rngs)
        return jnp.clip(img, -1.0, 1.0)

    return Generator(sample=sample, params=variables, latent_shape=(int(module.z_dim),),
                     num_classes=num_classes, resolution=int(module.img_resolution), kind=KIND)


def load(checkpoint, truncation_psi=1.0, noise_mode="const", truncation_cutoff=None,
         **convert_kwargs):
    """`Generator` from a converted directory (meta.json) or a snapshot .pkl / state_dict file.

    `convert_kwargs` go to `converters.stylegan2_ada.convert` (e.g. kwargs_json= for a .pt).
    """
    if os.path.isdir(checkpoint):
        module, variables = converter.load_converted(checkpoint)
    else:
        module, variables = converter.convert(checkpoint, **convert_kwargs)
    return from_module(module, variables, truncation_psi=truncation_psi,
                       truncation_cutoff=truncation_cutoff, noise_mode=noise_mode)
