"""A small conditional convolutional generator, randomly initialised or trained by the user.

For tests and for trying every method without a trained generator (`generator.kind=random`):
its samples are structured noise, not data. z (N, latent_dim), int labels -> NHWC in [-1, 1].
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from mgr_jax.generators.base import Generator


class TinyGenerator(nn.Module):
    latent_dim: int = 32
    num_classes: int = 10
    resolution: int = 16
    channels: int = 32

    @nn.compact
    def __call__(self, z, labels):
        h = z
        if self.num_classes:
            h = jnp.concatenate([h, nn.Embed(self.num_classes, self.latent_dim)(labels)], -1)
        h = nn.Dense(4 * 4 * self.channels)(h).reshape(-1, 4, 4, self.channels)
        size = 4
        while size < self.resolution:
            size *= 2
            h = jax.image.resize(h, (h.shape[0], size, size, h.shape[-1]), "nearest")
            h = nn.leaky_relu(nn.Conv(self.channels, (3, 3))(h), 0.2)
        return jnp.tanh(nn.Conv(3, (3, 3))(h))


def load(seed=0, latent_dim=32, num_classes=10, resolution=16):
    """A randomly initialised TinyGenerator behind the generic interface."""
    module = TinyGenerator(latent_dim, num_classes, resolution)
    params = jax.jit(module.init)(jax.random.key(seed), jnp.zeros((1, latent_dim)),
                                  jnp.zeros((1,), jnp.int32))  # jitted: one compile, not one per op

    def sample(p, z, labels, rng=None):  # deterministic: rng is not used
        del rng
        return module.apply(p, z, labels)
    return Generator(sample=sample, params=params, latent_shape=(latent_dim,),
                     num_classes=num_classes, resolution=resolution, kind="random")
