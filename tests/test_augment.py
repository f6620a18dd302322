"""The differentiable RandAugment: every op's image gradient, finite differences, batching."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgr_jax import synthetic_augment

N = 2
IMAGES = jax.random.uniform(jax.random.key(0), (N, 12, 12, 3), minval=0.1, maxval=0.9)
KEY = jax.random.key(5)


@jax.jit
def _apply_op(images, op, magnitude, sign):
    return synthetic_augment.apply_op(images, op, magnitude, sign, KEY)


@jax.jit
def _apply_op_grad(images, op, magnitude, sign, weights):
    return jax.grad(lambda x: jnp.sum(_apply_op(x, op, magnitude, sign) * weights))(images)


def _args(name, magnitude, sign):
    return (jnp.full((N,), synthetic_augment.OPS.index(name)), jnp.full((N,), magnitude),
            jnp.full((N,), sign))


def _apply(name, images=IMAGES, magnitude=0.6, sign=1.0):
    """One op for the batch, jitted with the op as data: every op shares one compile."""
    return _apply_op(images, *_args(name, magnitude, sign))


def _grad(name, weights, images=IMAGES, magnitude=0.6, sign=1.0):
    """d/d images of sum(weights * op(images)); jitted likewise."""
    return _apply_op_grad(images, *_args(name, magnitude, sign), weights)


@pytest.mark.parametrize("name", synthetic_augment.OPS)
def test_every_op_has_a_finite_non_zero_image_gradient(name):
    weights = jax.random.normal(jax.random.key(1), IMAGES.shape)
    grad = _grad(name, weights)
    assert np.all(np.isfinite(grad))
    assert np.abs(grad).sum() > 0.1 * np.abs(weights).sum() * 0.1


@pytest.mark.parametrize("name", ["brightness", "color", "contrast", "sharpness", "rotate",
                                  "shear_x", "translate_y", "invert"])
def test_gradient_matches_finite_differences(name):
    """Directional derivative along a random direction vs a central difference (float32).

    Images in [0.2, 0.6] keep every op away from the clip at 0 and 1, whose kink a finite
    difference would straddle.
    """
    images = 0.2 + 0.5 * IMAGES
    weights = jax.random.normal(jax.random.key(2), IMAGES.shape)
    direction = jax.random.normal(jax.random.key(3), IMAGES.shape)
    f = lambda x: jnp.sum(_apply(name, x, magnitude=0.37) * weights)  # noqa: E731
    analytic = jnp.sum(_grad(name, weights, images, magnitude=0.37) * direction)
    h = 1e-3
    numeric = (f(images + h * direction) - f(images - h * direction)) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, rtol=2e-2, atol=2e-2)


def test_posterize_is_straight_through_and_cutout_blocks_the_hole():
    out = _apply("posterize", magnitude=0.9)
    levels = np.unique(np.round(np.asarray(out) * 255))
    assert np.all(levels % 8 == 0)  # 8 - floor(3.6) = 5 bits kept.
    grad = _grad("posterize", jnp.ones_like(IMAGES), magnitude=0.9)
    np.testing.assert_allclose(grad, 1.0)
    cut = _apply("cutout", magnitude=1.0)
    hole = np.all(np.asarray(cut) == 0.5, axis=-1)
    assert hole.sum() >= N * 9
    grad = _grad("cutout", jnp.ones_like(IMAGES), magnitude=1.0)
    np.testing.assert_array_equal(np.asarray(grad)[hole], 0.0)


def test_identity_and_geometric_identity_at_zero_magnitude():
    np.testing.assert_allclose(_apply("identity"), IMAGES, atol=1e-6)
    for name in synthetic_augment.GEOMETRIC:
        np.testing.assert_allclose(_apply(name, magnitude=0.0), IMAGES, atol=1e-5)


def test_rand_augment_is_per_sample_jittable_and_keyed():
    images = jnp.tile(IMAGES[:1], (16, 1, 1, 1))
    fn = jax.jit(synthetic_augment.rand_augment)
    a, b = fn(KEY, images), fn(KEY, images)
    np.testing.assert_array_equal(a, b)
    c = fn(jax.random.key(9), images)
    assert not np.allclose(a, c)
    distinct = {np.asarray(x).tobytes() for x in a}
    assert len(distinct) > 8  # samples draw their own ops and magnitudes.
    assert a.shape == images.shape and float(a.min()) >= 0 and float(a.max()) <= 1


def test_smooth_is_pil_smooth_kernel_with_edge_padding():
    images = np.asarray(IMAGES)
    k = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float64) / 13.0
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    want = sum(k[dy, dx] * padded[:, dy:dy + 12, dx:dx + 12] for dy in range(3) for dx in range(3))
    np.testing.assert_allclose(synthetic_augment._smooth(IMAGES), want, atol=1e-6)


def test_bad_impl_and_max_magnitude_are_refused():
    """max_magnitude sizes the rotation's canvas, so it must be a number known when tracing."""
    with pytest.raises(ValueError, match="impl='fast'"):
        synthetic_augment.rand_augment(KEY, IMAGES, impl="fast")
    with pytest.raises(ValueError, match="max_magnitude=4"):
        synthetic_augment.rand_augment(KEY, IMAGES, max_magnitude=4)
    with pytest.raises(ValueError, match="static"):
        jax.jit(synthetic_augment.rand_augment)(KEY, IMAGES, max_magnitude=0.5)
