"""T's geometric passes against the one-step gather warp they replaced (written out here).

The reference is the formulation T used before the 1-D passes: one bilinear affine warp per op,
four gathers of the flattened image, zero where the source point leaves the image, checked
against dm-pix below. Shears and translations must equal it (float rounding); a rotation made of
three shears interpolates three times, so it is held to a tolerance on smooth images and to the
exact geometry on linear ramps, which bilinear interpolation reproduces without error.
"""
import functools

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgr_jax import synthetic_augment

OPS = synthetic_augment.OPS
IMPLS = ("dense", "gather")
N, H, W = 8, 16, 12  # not square: a row pass and a column pass cannot stand in for each other
MAGNITUDE = jnp.linspace(0.05, 1.0, N)
SIGN = jnp.array([1.0, -1.0] * (N // 2))
RANDOM = jax.random.uniform(jax.random.key(0), (N, H, W, 3), minval=0.1, maxval=0.9)
COTANGENT = jax.random.normal(jax.random.key(1), (N, H, W, 3))
YY, XX = np.meshgrid(np.arange(H, dtype=np.float32), np.arange(W, dtype=np.float32), indexing="ij")
# Varies over about 8 pixels: bilinear interpolation errs by about f''/8 per interpolation.
SMOOTH = jnp.asarray(np.stack([0.5 + 0.3 * np.sin(YY / 4 + k) * np.cos(XX / 5 - k)
                               for k in range(3)], -1)[None].repeat(N, 0))


def reference_matrix(name, magnitude, sign, size):
    """A (N, 2, 2) and t (N, 2), output -> source in (y, x), as T has always drawn them."""
    angle, shear = np.deg2rad(30.0) * magnitude * sign, 0.3 * magnitude * sign
    one, zero = jnp.ones_like(magnitude), jnp.zeros_like(magnitude)
    rows = {"rotate": ((jnp.cos(angle), -jnp.sin(angle)), (jnp.sin(angle), jnp.cos(angle))),
            "shear_x": ((one, zero), (shear, one)),
            "shear_y": ((one, shear), (zero, one))}.get(name, ((one, zero), (zero, one)))
    a = jnp.stack([jnp.stack(row, -1) for row in rows], -2)
    shift = 0.3 * magnitude * sign * size
    t = {"translate_x": jnp.stack([zero, shift], -1),
         "translate_y": jnp.stack([shift, zero], -1)}.get(name, jnp.zeros(magnitude.shape + (2,)))
    return a, t


def reference_source(a, t, h, w):
    """Source points (N, H, W, 2) of the output pixels: A (p - c) + c + t, c the centre."""
    centre = jnp.array([(h - 1) / 2.0, (w - 1) / 2.0])
    grid = jnp.stack(jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                                  jnp.arange(w, dtype=jnp.float32), indexing="ij"), -1)
    return jnp.einsum("nij,yxj->nyxi", a, grid - centre) + centre + t[:, None, None, :]


def reference_warp(images, a, t):
    """One bilinear warp by gathers of the flattened image; 0 where the source is outside."""
    n, h, w, c = images.shape
    src = reference_source(a, t, h, w)
    sy, sx = src[..., 0], src[..., 1]
    inside = (sy >= 0) & (sy <= h - 1) & (sx >= 0) & (sx <= w - 1)
    y0 = jnp.clip(jnp.floor(sy), 0, h - 1)
    x0 = jnp.clip(jnp.floor(sx), 0, w - 1)
    fy, fx = (sy - y0)[..., None], (sx - x0)[..., None]
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
    flat = images.reshape(n, h * w, c)
    batch = jnp.arange(n)[:, None, None]

    def at(yy, xx):
        return flat[batch, yy * w + xx]
    out = ((1 - fy) * (1 - fx) * at(y0, x0) + (1 - fy) * fx * at(y0, x1)
           + fy * (1 - fx) * at(y1, x0) + fy * fx * at(y1, x1))
    return jnp.where(inside[..., None], out, 0.0)


def reference_apply_op(images, op, magnitude, sign, key):
    """T's layer as before the 1-D passes: every op computed for the batch, then selected."""
    size = images.shape[1]
    factor = (1.0 + 0.9 * magnitude * sign)[:, None, None, None]
    gray = pix.rgb_to_grayscale(images, keep_dims=True)
    candidates = {
        "identity": images,
        "autocontrast": synthetic_augment._autocontrast(images),
        "brightness": images * factor,
        "color": gray + factor * (images - gray),
        "contrast": gray.mean(axis=(1, 2, 3), keepdims=True) + factor * (
            images - gray.mean(axis=(1, 2, 3), keepdims=True)),
        "sharpness": synthetic_augment._smooth(images) + factor * (
            images - synthetic_augment._smooth(images)),
        "posterize": synthetic_augment._posterize(images, magnitude),
        "solarize": jax.vmap(pix.solarize)(images, 1.0 - magnitude),
        "invert": 1.0 - images,
        "cutout": synthetic_augment._cutout(images, magnitude, key),
    }
    for name in synthetic_augment.GEOMETRIC:
        candidates[name] = reference_warp(images, *reference_matrix(name, magnitude, sign, size))
    out = images
    for index, name in enumerate(OPS):
        out = jnp.where((op == index)[:, None, None, None], candidates[name], out)
    return jnp.clip(out, 0.0, 1.0)


@jax.jit
def reference_rand_augment(key, images):
    """Two layers of ops drawn from all of OPS as T draws them; also returns the ops drawn."""
    n, drawn = images.shape[0], []
    for layer_key in jax.random.split(key, 2):
        k_op, k_mag, k_sign, k_cut = jax.random.split(layer_key, 4)
        op = jax.random.randint(k_op, (n,), 0, len(OPS))
        magnitude = jax.random.uniform(k_mag, (n,))
        sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, (n,)), 1.0, -1.0)
        images = reference_apply_op(images, op, magnitude, sign, k_cut)
        drawn.append(op)
    return images, jnp.stack(drawn, 1)


def _value_and_grad(fn, images, cotangent=COTANGENT):
    out, vjp = jax.vjp(fn, images)
    return out, vjp(cotangent)[0]


@jax.jit
def _reference_warp_vjp(images, a, t, cotangent):
    return _value_and_grad(lambda x: reference_warp(x, a, t), images, cotangent)


@functools.partial(jax.jit, static_argnames="impl")
def _geometric_vjp(images, op, cotangent, impl):
    return _value_and_grad(
        lambda x: synthetic_augment._geometric(x, op, MAGNITUDE, SIGN, 1.0, impl), images,
        cotangent)


def _reference(images, name, cotangent=COTANGENT):
    """The one-step warp of op `name` at MAGNITUDE and SIGN, and its vjp of the cotangent."""
    a, t = reference_matrix(name, MAGNITUDE, SIGN, images.shape[1])
    return _reference_warp_vjp(images, a, t, cotangent)


def _new(images, name, cotangent=COTANGENT, *, impl):
    """T's geometric passes for op `name` at MAGNITUDE and SIGN, and its vjp (one compile for
    every op: the op is data)."""
    return _geometric_vjp(images, jnp.full((N,), OPS.index(name)), cotangent, impl)


def test_reference_warp_equals_dm_pix_affine_transform():
    """The reference against dm-pix's own map: rotations, shears, shifts beyond the border."""
    images = jax.random.uniform(jax.random.key(3), (4, 9, 7, 3))
    angle = jnp.array([0.3, -0.5, 0.0, 0.1])
    a = jnp.stack([jnp.stack([jnp.cos(angle), -jnp.sin(angle)], -1),
                   jnp.stack([jnp.sin(angle), jnp.cos(angle)], -1)], -2)
    a = a.at[2].set(jnp.array([[1.0, 0.0], [0.4, 1.0]]))  # a shear
    t = jnp.array([[0.0, 0.0], [1.5, -2.25], [0.0, 3.0], [-20.0, 0.0]])  # the last: all outside
    centre = jnp.array([4.0, 3.0])

    def dm_pix(image, a2, t2):
        offset = jnp.concatenate([centre - a2 @ centre + t2, jnp.zeros(1)])
        return pix.affine_transform(image, jnp.eye(3).at[:2, :2].set(a2), offset=offset,
                                    order=1, mode="constant", cval=0.0)
    want = jax.jit(jax.vmap(dm_pix))(images, a, t)
    np.testing.assert_allclose(jax.jit(reference_warp)(images, a, t), want, atol=1e-5)
    assert float(jnp.abs(want[3]).max()) == 0.0


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["shear_x", "shear_y", "translate_x", "translate_y"])
def test_shears_and_translations_equal_the_one_step_warp(name, impl):
    """Values and the image gradient of a random linear functional (float32, random images).

    1e-5: both are the same two-tap interpolation, summed in another order.
    """
    want, want_grad = _reference(RANDOM, name)
    got, got_grad = _new(RANDOM, name, impl=impl)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got_grad, want_grad, atol=1e-5)
    assert float(jnp.abs(want).max()) > 0 and float(jnp.mean(want == 0.0)) > 0.02  # cut some


def _box3(x):
    """3x3 box average over (H, W) of (N, H, W, C), zero outside."""
    padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(padded[:, dy:dy + x.shape[1], dx:dx + x.shape[2]]
               for dy in range(3) for dx in range(3)) / 9.0


@pytest.mark.parametrize("impl", IMPLS)
def test_rotation_is_the_one_step_rotation_within_interpolation_error(impl):
    """Same support exactly; values and gradients within interpolation error on smooth data.

    Values: three bilinear interpolations instead of one, about 3 f''/8 apart: at most 5e-3 on
    SMOOTH (|f''| <= 0.05 per pixel^2, measured 4.4e-3) where the source point is half a pixel
    inside the image, 1.5e-2 (measured 1.2e-2) in the half-pixel band at its edge, where the
    passes' stencils reach edge-replicated neighbours at other places. (On random images the
    two differ by up to 0.4: interpolation error, not compared.)
    Gradients: each output pixel's cotangent reaches the source pixels with weights summing to
    1 in both, so per-image sums agree (float rounding); how it is shared between neighbouring
    source pixels differs (a moire of up to 20 %), so the 3x3-averaged gradients of a smooth
    cotangent are compared: 2.5e-2 of a scale of 0.3 (measured 1.8e-2).
    """
    smooth_cotangent = SMOOTH - 0.5
    want, want_grad = _reference(SMOOTH, "rotate", smooth_cotangent)
    got, got_grad = _new(SMOOTH, "rotate", smooth_cotangent, impl=impl)
    np.testing.assert_array_equal(got == 0.0, want == 0.0)
    src = reference_source(*reference_matrix("rotate", MAGNITUDE, SIGN, H), H, W)
    deep = np.asarray((src[..., 0] >= 0.5) & (src[..., 0] <= H - 1.5) & (src[..., 1] >= 0.5)
                      & (src[..., 1] <= W - 1.5))
    np.testing.assert_allclose(np.asarray(got)[deep], np.asarray(want)[deep], atol=5e-3)
    np.testing.assert_allclose(got, want, atol=1.5e-2)
    np.testing.assert_allclose(_box3(got_grad), _box3(want_grad), atol=2.5e-2)
    _, want_grad = _reference(SMOOTH, "rotate")
    _, got_grad = _new(SMOOTH, "rotate", impl=impl)
    np.testing.assert_allclose(np.sum(got_grad, axis=(1, 2, 3)), np.sum(want_grad, axis=(1, 2, 3)),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_rotation_geometry_is_exact_on_linear_ramps(impl):
    """On f = alpha y + beta x + gamma every pass is exact, so the rotation is too: where the
    source point A (p - c) + c lies 2 pixels inside the image (the stencils of the three passes
    stay inside), T gives f(source) to float rounding; same centre, angle and sign as before."""
    coefficients = np.array([[0.02, -0.015, 0.4], [-0.01, 0.03, 0.5], [0.025, 0.02, 0.1]])
    ramp = jnp.asarray(sum(coefficients[:, i] * v[..., None]
                           for i, v in enumerate((YY, XX, np.ones_like(YY))))[None].repeat(N, 0))
    got, _ = _new(ramp, "rotate", impl=impl)
    src = reference_source(*reference_matrix("rotate", MAGNITUDE, SIGN, H), H, W)
    want = (src[..., 0, None] * coefficients[:, 0] + src[..., 1, None] * coefficients[:, 1]
            + coefficients[:, 2])
    deep = ((src[..., 0] >= 2) & (src[..., 0] <= H - 3) & (src[..., 1] >= 2)
            & (src[..., 1] <= W - 3))
    assert int(deep.sum()) > N * H * W // 4
    np.testing.assert_allclose(np.asarray(got)[deep], np.asarray(want)[deep], atol=1e-5)
    want_one_step, _ = _reference(ramp, "rotate")
    np.testing.assert_allclose(np.asarray(want_one_step)[deep], np.asarray(want)[deep], atol=1e-5)


def test_dense_and_gather_passes_agree():
    """The two ways of running a pass (accelerators, CPU) on random images, all five ops."""
    for name in synthetic_augment.GEOMETRIC:
        dense, dense_grad = _new(RANDOM, name, impl="dense")
        gather, gather_grad = _new(RANDOM, name, impl="gather")
        np.testing.assert_allclose(dense, gather, atol=1e-5)
        np.testing.assert_allclose(dense_grad, gather_grad, atol=1e-5)


def test_draws_are_unchanged():
    """rand_augment draws the same ops, magnitudes, signs and cutouts from a key as before.

    All of OPS, two layers, on smooth images. Samples that drew only pointwise ops: identical
    bits (the passes are exact identities for them). Shears or translations but no rotation:
    float rounding. A rotation: mean difference within 2e-3 (measured 1.4e-3, where a rotation
    follows a translation's hard edge; two different samples differ by 1.4e-2 or more).
    """
    key = jax.random.key(7)
    smooth = jnp.tile(SMOOTH[:1], (32, 1, 1, 1))
    got = np.asarray(jax.jit(synthetic_augment.rand_augment)(key, smooth))
    want, drawn = map(np.asarray, reference_rand_augment(key, smooth))
    geometric = np.isin(drawn, [OPS.index(o) for o in synthetic_augment.GEOMETRIC]).any(1)
    rotated = (drawn == OPS.index("rotate")).any(1)
    assert min(np.sum(~geometric), np.sum(geometric & ~rotated), np.sum(rotated)) >= 4
    np.testing.assert_array_equal(got[~geometric], want[~geometric])
    np.testing.assert_allclose(got[geometric & ~rotated], want[geometric & ~rotated], atol=1e-5)
    assert np.abs(got - want)[rotated].mean(axis=(1, 2, 3)).max() < 2e-3


def test_accelerator_programs_have_no_gathers():
    """T and its gradient lowered for TPU and GPU (no device needed): matmuls, no per-pixel
    gathers or scatter-adds; lowered for CPU, the gather passes."""
    def forward_and_backward(images):
        return jax.vjp(lambda x: synthetic_augment.rand_augment(jax.random.key(2), x),
                       images)[1](COTANGENT)

    for platform, gathers in (("tpu", False), ("cuda", False), ("cpu", True)):
        exported = jax.export.export(jax.jit(forward_and_backward), platforms=[platform])
        text = exported(RANDOM).mlir_module()
        assert "dot_general" in text
        assert ("stablehlo.gather" in text) == gathers, platform
        assert ("stablehlo.scatter" in text) == gathers, platform
