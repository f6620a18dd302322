"""FastGAN as a `Generator`: sample(params, z, labels) -> NHWC images in [-1, 1].

The network is `mgr_jax.models.fastgan.FastGAN`; `converters.fastgan` reads the official files.
"""
import numbers
import os

import jax
import jax.numpy as jnp

from converters import fastgan as conv
from mgr_jax.generators import base


def make_sample_fn(module, noise_mode="const", noise_seed=0):
    """sample(params, z, labels, rng=None) -> clipped NHWC images; see `load` for the modes."""
    if noise_mode not in ("const", "random", "none"):
        raise ValueError(f"noise_mode must be const, random or none, got {noise_mode!r}")
    if (isinstance(noise_seed, bool) or not isinstance(noise_seed, numbers.Integral)
            or not 0 <= noise_seed < 2 ** 32):
        raise ValueError(f"noise_seed={noise_seed!r} must be an integer in 0..2**32-1")
    const_key = jax.random.key(noise_seed) if noise_mode == "const" else None

    def sample(params, z, labels, rng=None):
        """z (N, nz); labels ignored (unconditional) -> (N, im, im, nc) clipped to [-1, 1]."""
        del labels
        if noise_mode == "none":
            img, _ = module.apply(params, z, noise_mode="none")
            return jnp.clip(img, -1.0, 1.0)
        if noise_mode == "random" and rng is None:
            raise ValueError("noise_mode 'random' needs an explicit key: sample(..., rng=key)")
        key = const_key if noise_mode == "const" else rng
        img, _ = module.apply(params, z, rngs={"noise": key})
        return jnp.clip(img, -1.0, 1.0)
    return sample


def load(checkpoint, use_ema=True, noise_mode="const", noise_seed=0):
    """`Generator` from a FastGAN `all_<iter>.pth` or a converted directory.

    params is the Flax variables pytree (all float, so differentiable). Labels are ignored.
    NoiseInjection noise, by noise_mode (as the StyleGAN2-ADA kind names them):
      "const"   drawn from jax.random.key(noise_seed), fixed at load: sample is a pure function
                of (params, z, labels); the maps depend only on the batch shape;
      "random"  drawn from the key passed as sample(params, z, labels, rng=key) (required);
      "none"    zero (the NoiseInjection layers are skipped).
    The official model's outputs are unbounded at im_size 256 / 512 (it applies no tanh there);
    `sample` clips them to [-1, 1] like every generator kind.
    """
    if os.path.isdir(checkpoint):
        module, variables = conv.load_converted(checkpoint)
    else:
        module, variables = conv.convert(checkpoint, use_ema=use_ema)
    return base.Generator(
        sample=make_sample_fn(module, noise_mode, noise_seed), params=variables,
        latent_shape=(module.nz,), num_classes=0, resolution=module.im_size, kind="fastgan")
