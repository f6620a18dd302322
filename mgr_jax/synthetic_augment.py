"""Differentiable RandAugment T for synthetic images (PCR's strong branch, UDA's strong view).

Built from dm-pix and jax.numpy, batched with per-sample random ops and magnitudes drawn from a
PRNG key, jittable: every op is computed for the batch and each sample's result is selected
with `jnp.where`, so nothing branches in Python on traced values. Images are NHWC in [0, 1].

Ops (RandAugment as in FixMatch/UDA, random magnitude in [0, 1] per sample and layer, random
sign for signed ops): identity, autocontrast, brightness, color, contrast, sharpness,
posterize, solarize, invert, rotate (30 deg), shear_x / shear_y (0.3), translate_x /
translate_y (30 % of the side), cutout (up to half the side, grey fill).
Gradients w.r.t. the image:
  - exact for all ops but posterize; geometric ops interpolate bilinearly (dm-pix
    affine_transform's convention, as gathers), so their gradient reaches the source pixels;
  - posterize uses a straight-through estimator (forward: quantised, backward: identity);
  - solarize passes the image gradient (sign flipped above the threshold); its threshold,
    like every magnitude, receives none;
  - cutout passes zero gradient to the erased square (nothing there depends on the image).
Left out: equalize (a per-image histogram lookup: piecewise constant, so zero gradient almost
everywhere, and costly to batch); it would only be usable through a straight-through estimator.
"""
import dm_pix as pix
import jax
import jax.numpy as jnp

OPS = ("identity", "autocontrast", "brightness", "color", "contrast", "sharpness", "posterize",
       "solarize", "invert", "rotate", "shear_x", "shear_y", "translate_x", "translate_y",
       "cutout")
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def _blend(degenerate, images, factor):
    """PIL ImageEnhance: degenerate + factor * (image - degenerate); factor (N,)."""
    return degenerate + factor[:, None, None, None] * (images - degenerate)


def _smooth(images):
    """PIL's SMOOTH kernel [[1,1,1],[1,5,1],[1,1,1]] / 13, per channel, edge-padded.

    As shifted sums: XLA on CPU runs the equivalent depthwise convolution far slower.
    """
    h, w = images.shape[1:3]
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    total = 4.0 * images  # the centre weighs 5 = 1 (in the 3x3 sum below) + 4
    for dy in range(3):
        for dx in range(3):
            total = total + padded[:, dy:dy + h, dx:dx + w]
    return total / 13.0


def _autocontrast(images):
    lo = jnp.min(images, axis=(1, 2), keepdims=True)
    hi = jnp.max(images, axis=(1, 2), keepdims=True)
    scale = jnp.where(hi > lo, 1.0 / jnp.maximum(hi - lo, 1e-6), 1.0)
    return jnp.where(hi > lo, (images - lo) * scale, images)


def _posterize(images, magnitude):
    """Keep 8 - floor(4 m) bits; straight-through gradient."""
    shift = 2.0 ** jnp.floor(4.0 * magnitude)[:, None, None, None]
    quantised = jnp.floor(images * 255.0 / shift) * shift / 255.0
    return images + jax.lax.stop_gradient(quantised - images)


def _affine_matrices(op, magnitude, sign, size):
    """Per-sample 2x2 matrices A and translations t (pixels), output -> input (y, x)."""
    angle = jnp.deg2rad(30.0) * magnitude * sign
    shear = 0.3 * magnitude * sign
    shift = 0.3 * magnitude * sign * size
    one, zero = jnp.ones_like(magnitude), jnp.zeros_like(magnitude)
    eye = jnp.stack([jnp.stack([one, zero], -1), jnp.stack([zero, one], -1)], -2)
    mats = {
        "rotate": jnp.stack([jnp.stack([jnp.cos(angle), -jnp.sin(angle)], -1),
                             jnp.stack([jnp.sin(angle), jnp.cos(angle)], -1)], -2),
        "shear_x": jnp.stack([jnp.stack([one, zero], -1), jnp.stack([shear, one], -1)], -2),
        "shear_y": jnp.stack([jnp.stack([one, shear], -1), jnp.stack([zero, one], -1)], -2),
    }
    shifts = {"translate_x": jnp.stack([zero, shift], -1),
              "translate_y": jnp.stack([shift, zero], -1)}
    a, t = eye, jnp.zeros(magnitude.shape + (2,))
    for name in GEOMETRIC:
        chosen = (op == OPS.index(name))[:, None]
        if name in mats:
            a = jnp.where(chosen[:, :, None], mats[name], a)
        else:
            t = jnp.where(chosen, shifts[name], t)
    return a, t


def _warp(images, a, t):
    """Bilinear affine warp about the image centre, zeros outside (dm-pix affine_transform's
    convention: a source point outside [0, size - 1] on either axis reads 0).

    Output pixel p = (y, x) reads the source at a p + (c - a c + t), c the centre. Written as
    four gathers of the flattened image (gradients: scatter-adds), which XLA runs ~40x faster
    on CPU than dm-pix's per-image coordinate maps at 224x224.
    """
    n, h, w, c = images.shape
    centre = jnp.array([(h - 1) / 2.0, (w - 1) / 2.0])
    grid = jnp.stack(jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                                  jnp.arange(w, dtype=jnp.float32), indexing="ij"), -1)
    grid = grid.reshape(-1, 2)  # (HW, 2) output points (y, x)
    offset = centre - jnp.einsum("nij,j->ni", a, centre) + t  # (N, 2)
    src = jnp.einsum("nij,pj->npi", a, grid) + offset[:, None, :]  # (N, HW, 2)
    sy, sx = src[..., 0], src[..., 1]
    inside = (sy >= 0) & (sy <= h - 1) & (sx >= 0) & (sx <= w - 1)
    y0, x0 = jnp.floor(sy), jnp.floor(sx)
    wy, wx = sy - y0, sx - x0
    y0 = jnp.clip(y0, 0, h - 1).astype(jnp.int32)
    x0 = jnp.clip(x0, 0, w - 1).astype(jnp.int32)
    y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
    flat = images.reshape(n, h * w, c)

    def tap(yy, xx):
        return jnp.take_along_axis(flat, (yy * w + xx)[..., None], axis=1)
    wy, wx = wy[..., None], wx[..., None]
    out = ((1 - wy) * ((1 - wx) * tap(y0, x0) + wx * tap(y0, x1))
           + wy * ((1 - wx) * tap(y1, x0) + wx * tap(y1, x1)))
    return jnp.where(inside[..., None], out, 0.0).reshape(n, h, w, c)


def _cutout(images, magnitude, key):
    n, h, w, _ = images.shape
    side = 0.5 * magnitude * min(h, w)
    cy, cx = jax.random.uniform(key, (2, n)) * jnp.array([[h], [w]])
    ys, xs = jnp.arange(h)[None, :], jnp.arange(w)[None, :]
    inside_y = jnp.abs(ys + 0.5 - cy[:, None]) < side[:, None] / 2
    inside_x = jnp.abs(xs + 0.5 - cx[:, None]) < side[:, None] / 2
    hole = (inside_y[:, :, None] & inside_x[:, None, :])[..., None]
    return jnp.where(hole, 0.5, images)


def apply_op(images, op, magnitude, sign, key):
    """Apply op index op[i] with magnitude[i] in [0, 1] and sign[i] in {-1, 1} to image i.

    images (N, H, W, C) in [0, 1]; op int (N,); magnitude, sign float (N,). Returns the same
    shape, clipped to [0, 1].
    """
    factor = 1.0 + 0.9 * magnitude * sign
    gray = pix.rgb_to_grayscale(images, keep_dims=True) if images.shape[-1] == 3 else images
    a, t = _affine_matrices(op, magnitude, sign, images.shape[1])
    candidates = {
        "autocontrast": lambda: _autocontrast(images),
        "brightness": lambda: images * factor[:, None, None, None],
        "color": lambda: _blend(gray, images, factor),
        "contrast": lambda: _blend(jnp.mean(gray, axis=(1, 2, 3), keepdims=True), images, factor),
        "sharpness": lambda: _blend(_smooth(images), images, factor),
        "posterize": lambda: _posterize(images, magnitude),
        "solarize": lambda: jax.vmap(pix.solarize)(images, 1.0 - magnitude),
        "invert": lambda: 1.0 - images,
        "cutout": lambda: _cutout(images, magnitude, key),
    }
    out = _warp(images, a, t)  # the identity matrix for every non-geometric op.
    for name, fn in candidates.items():
        out = jnp.where((op == OPS.index(name))[:, None, None, None], fn(), out)
    return jnp.clip(out, 0.0, 1.0)


def rand_augment(key, images, num_ops=2, max_magnitude=1.0, ops=OPS):
    """RandAugment: `num_ops` random ops per sample, magnitudes U(0, max_magnitude).

    images (N, H, W, C) in [0, 1] -> same shape; differentiable w.r.t. images (see module doc).
    ops: the names drawn from (uniformly), all of OPS by default; e.g. leaving out posterize
    and solarize makes T smooth in the image but for clipping, cutout and the bilinear warps.
    """
    n = images.shape[0]
    ops = tuple(ops)
    unknown = [o for o in ops if o not in OPS]
    if unknown or not ops:
        raise ValueError(f"ops={ops!r}: choose a non-empty subset of {OPS}")
    for layer_key in jax.random.split(key, num_ops):
        k_op, k_mag, k_sign, k_cut = jax.random.split(layer_key, 4)
        op = jax.random.randint(k_op, (n,), 0, len(ops))
        if ops != OPS:  # an index into the subset, mapped to OPS' numbering
            op = jnp.asarray([OPS.index(o) for o in ops], jnp.int32)[op]
        magnitude = jax.random.uniform(k_mag, (n,)) * max_magnitude
        sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, (n,)), 1.0, -1.0)
        images = apply_op(images, op, magnitude, sign, k_cut)
    return images
