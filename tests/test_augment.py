"""The differentiable RandAugment: every op's image gradient, finite differences, batching."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgr_jax import synthetic_augment

N = 2
IMAGES = jax.random.uniform(jax.random.key(0), (N, 12, 12, 3), minval=0.1, maxval=0.9)
KEY = jax.random.key(5)


def _apply(name, images=IMAGES, magnitude=0.6, sign=1.0):
    op = jnp.full((N,), synthetic_augment.OPS.index(name))
    return synthetic_augment.apply_op(images, op, jnp.full((N,), magnitude), jnp.full((N,), sign), KEY)


@pytest.mark.parametrize("name", synthetic_augment.OPS)
def test_every_op_has_a_finite_non_zero_image_gradient(name):
    weights = jax.random.normal(jax.random.key(1), IMAGES.shape)
    grad = jax.grad(lambda x: jnp.sum(_apply(name, x) * weights))(IMAGES)
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
    analytic = jnp.sum(jax.grad(f)(images) * direction)
    h = 1e-3
    numeric = (f(images + h * direction) - f(images - h * direction)) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, rtol=2e-2, atol=2e-2)


def test_posterize_is_straight_through_and_cutout_blocks_the_hole():
    out = _apply("posterize", magnitude=0.9)
    levels = np.unique(np.round(np.asarray(out) * 255))
    assert np.all(levels % 8 == 0)  # 8 - floor(3.6) = 5 bits kept.
    grad = jax.grad(lambda x: jnp.sum(_apply("posterize", x, magnitude=0.9)))(IMAGES)
    np.testing.assert_allclose(grad, 1.0)
    cut = _apply("cutout", magnitude=1.0)
    hole = np.all(np.asarray(cut) == 0.5, axis=-1)
    assert hole.sum() >= N * 9
    grad = jax.grad(lambda x: jnp.sum(_apply("cutout", x, magnitude=1.0)))(IMAGES)
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


def test_warp_equals_dm_pix_affine_transform():
    """The gather warp against dm-pix's own map: rotations, shears, shifts beyond the border."""
    import dm_pix as pix  # noqa: PLC0415
    images = jax.random.uniform(jax.random.key(3), (4, 9, 7, 3))
    angle = jnp.array([0.3, -0.5, 0.0, 0.1])
    a = jnp.stack([jnp.stack([jnp.cos(angle), -jnp.sin(angle)], -1),
                   jnp.stack([jnp.sin(angle), jnp.cos(angle)], -1)], -2)
    a = a.at[2].set(jnp.array([[1.0, 0.0], [0.4, 1.0]]))  # a shear
    t = jnp.array([[0.0, 0.0], [1.5, -2.25], [0.0, 3.0], [-20.0, 0.0]])  # the last: all outside
    centre = jnp.array([4.0, 3.0])

    def reference(image, a2, t2):
        offset = jnp.concatenate([centre - a2 @ centre + t2, jnp.zeros(1)])
        return pix.affine_transform(image, jnp.eye(3).at[:2, :2].set(a2), offset=offset,
                                    order=1, mode="constant", cval=0.0)
    want = jax.vmap(reference)(images, a, t)
    np.testing.assert_allclose(synthetic_augment._warp(images, a, t), want, atol=1e-5)
    assert float(jnp.abs(want[3]).max()) == 0.0


def test_smooth_is_pil_smooth_kernel_with_edge_padding():
    images = np.asarray(IMAGES)
    k = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float64) / 13.0
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    want = sum(k[dy, dx] * padded[:, dy:dy + 12, dx:dx + 12] for dy in range(3) for dx in range(3))
    np.testing.assert_allclose(synthetic_augment._smooth(IMAGES), want, atol=1e-6)
