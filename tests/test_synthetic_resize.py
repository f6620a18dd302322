"""synthetic.resize_bilinear: jax.image.resize's bilinear, written as two matrix products."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgr_jax import synthetic


@pytest.mark.parametrize("shape,out", [((2, 32, 32, 3), (28, 28)), ((1, 8, 12, 1), (20, 6)),
                                       ((3, 16, 16, 3), (16, 16)), ((2, 7, 5, 2), (5, 11))])
def test_values_and_gradients_match_jax_image_resize(shape, out):
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    cotangent = jnp.asarray(rng.standard_normal((shape[0], *out, shape[3])), jnp.float32)

    def ours(x):
        return synthetic.resize_bilinear(x, *out)

    def reference(x):
        return jax.image.resize(x, (shape[0], *out, shape[3]), "bilinear")

    np.testing.assert_allclose(ours(images), reference(images), atol=2e-5)
    grad_ours = jax.vjp(ours, images)[1](cotangent)[0]
    grad_ref = jax.vjp(reference, images)[1](cotangent)[0]
    np.testing.assert_allclose(grad_ours, grad_ref, atol=2e-5)


def test_rows_sum_to_one_and_constants_stay_constant():
    for size_in, size_out in ((256, 224), (64, 224), (5, 3)):
        weights = synthetic.bilinear_weights(size_in, size_out)
        assert weights.shape == (size_out, size_in)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    flat = jnp.full((1, 9, 9, 3), 0.25, jnp.float32)
    np.testing.assert_allclose(synthetic.resize_bilinear(flat, 4, 13), 0.25, atol=1e-7)


def test_shrinking_by_two_uses_the_widened_triangle_by_hand():
    """4 -> 2: output centres at input 0.5 and 2.5, the triangle widened to half-width 2 gives
    taps 3/4, 3/4, 1/4 (and 0), renormalised to 3/7, 3/7, 1/7 at the edges."""
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    weights = synthetic.bilinear_weights(4, 2)
    np.testing.assert_allclose(weights, [[3 / 7, 3 / 7, 1 / 7, 0], [0, 1 / 7, 3 / 7, 3 / 7]],
                               atol=1e-6)
    want = np.einsum("oh,nhwc,pw->nopc", weights, x, weights)
    np.testing.assert_allclose(synthetic.resize_bilinear(jnp.asarray(x), 2, 2), want, atol=1e-5)
