"""Latent finders F_phi of MPS (Eq. 10 and the ablations of Table 5).

Each maps a batch of latents z (N, *latent_shape) to latents of the same shape; the generator
then samples x_p = G(F(z), y_p). Every variant starts as (or near) the identity, so MPS begins
from uniform sampling and the KL penalty (Eq. 11) starts near its minimum.
"""
import flax.linen as nn
import jax.numpy as jnp

ARCHS = ("residual", "residual_shallow", "linear", "mlp")


class Finder(nn.Module):
    """F(z): `residual` z + tanh(MLP(z)) (default), `residual_shallow` z + tanh(Wz + b),
    `linear` Wz + b, `mlp` MLP(z). MLP = three dense layers with leaky ReLU between them."""
    arch: str = "residual"
    hidden_dim: int = 0  # 0: the latent size.

    @nn.compact
    def __call__(self, z):
        shape = z.shape
        z = z.reshape(shape[0], -1)
        d = z.shape[-1]
        hidden = self.hidden_dim or d
        # The last layer starts at zero so the residual forms start as F(z) = z.
        zero = nn.initializers.zeros
        if self.arch == "residual":
            out = z + jnp.tanh(self._mlp(z, hidden, d, last_init=zero))
        elif self.arch == "residual_shallow":
            out = z + jnp.tanh(nn.Dense(d, kernel_init=zero, name="fc")(z))
        elif self.arch == "linear":
            out = nn.Dense(d, kernel_init=_identity_init, name="fc")(z)
        elif self.arch == "mlp":
            out = self._mlp(z, hidden, d, last_init=nn.initializers.lecun_normal())
        else:
            raise ValueError(f"finder.arch={self.arch!r} is not known; choose one of {ARCHS}")
        return out.reshape(shape)

    def _mlp(self, z, hidden, d, last_init):
        h = nn.leaky_relu(nn.Dense(hidden, name="fc1")(z), 0.2)
        h = nn.leaky_relu(nn.Dense(hidden, name="fc2")(h), 0.2)
        return nn.Dense(d, kernel_init=last_init, name="fc3")(h)


def _identity_init(key, shape, dtype=jnp.float32):
    del key
    return jnp.eye(shape[0], shape[1], dtype=dtype)
