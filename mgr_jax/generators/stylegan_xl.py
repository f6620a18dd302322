"""StyleGAN-XL as a `Generator`: sample(params, z, labels) -> NHWC images in [-1, 1].

`load` takes a converted directory (`python -m converters.stylegan_xl snapshot.pkl OUT`) or an
official snapshot `.pkl` / `.pkl.xz` directly (stem or superresolution G, `G_ema`); labels are
int class indices, one-hot encoded here. StyleGAN-XL has no noise inputs: `noise_mode` is
checked and has no effect.
"""
import os

import jax
import jax.numpy as jnp

from converters import stylegan_xl as converter
from mgr_jax.generators import base
from mgr_jax.generators.base import Generator

KIND = "stylegan_xl"


def from_module(module, variables, truncation_psi=1.0, truncation_cutoff=None,
                noise_mode="const"):
    """Wrap a `models.stylegan_xl.Generator` and its variables as a `Generator`."""
    if noise_mode not in ("const", "random", "none"):
        raise ValueError(f"noise_mode must be const, random or none, got {noise_mode!r}")
    base.check_truncation(truncation_psi, truncation_cutoff)
    num_classes = int(module.c_dim)

    def sample(params, z, labels, rng=None):
        """z (N, z_dim), labels int (N,) -> (N, R, R, C) in [-1, 1]; rng is unused."""
        del rng  # no noise inputs
        c = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) if num_classes > 0 else None
        img = module.apply(params, z, c, truncation_psi=truncation_psi,
                           truncation_cutoff=truncation_cutoff, noise_mode=noise_mode)
        return jnp.clip(img, -1.0, 1.0)

    return Generator(sample=sample, params=variables, latent_shape=(int(module.z_dim),),
                     num_classes=num_classes, resolution=int(module.img_resolution), kind=KIND)


def load(checkpoint, truncation_psi=1.0, truncation_cutoff=None, noise_mode="const",
         **convert_kwargs):
    """`Generator` from a converted directory (meta.json) or an official snapshot file.

    `convert_kwargs` go to `converters.stylegan_xl.convert` (key=, dtype=).
    """
    if os.path.isdir(checkpoint):
        if convert_kwargs:
            raise ValueError(f"{checkpoint} is a converted directory; {sorted(convert_kwargs)} "
                             "only apply to snapshot files")
        module, variables = converter.load_converted(checkpoint)
    else:
        module, variables = converter.convert(checkpoint, **convert_kwargs)
    return from_module(module, variables, truncation_psi=truncation_psi,
                       truncation_cutoff=truncation_cutoff, noise_mode=noise_mode)
