"""Differentiable RandAugment T for synthetic images (PCR's strong branch, UDA's strong view).

Built from jax.numpy and dm-pix, batched with per-sample random ops and magnitudes drawn from a
PRNG key, jittable. Images are NHWC in [0, 1].

Ops (RandAugment as in FixMatch/UDA, random magnitude in [0, 1] per sample and layer, random
sign for signed ops): identity, autocontrast, brightness, color, contrast, sharpness,
posterize, solarize, invert, rotate (30 deg), shear_x / shear_y (0.3), translate_x /
translate_y (30 % of the side), cutout (up to half the side, grey fill).

Geometry: output pixel p = (y, x) reads the source point A (p - c) + c + t (c the image centre,
`_affine_matrices`) by bilinear interpolation, and is 0 where that point lies outside the image
(dm-pix affine_transform's convention). Nothing is warped in 2-D: a shear or a translation moves
each row (x) or each column (y) by its own shift, a 1-D resampling, and a rotation by a is three
shears, S_x(tan a/2) S_y(-sin a) S_x(tan a/2) (Paeth). Every layer runs the same three passes
for every image (x onto a canvas wide enough for the rotation's intermediate image, y, x back)
with per-image slopes and shifts, zero in the passes an op does not use, so its cost does not
depend on the ops drawn. Source points are clamped to each pass's input (edge replication) and
the result is cut to the exact support of A: shears and translations equal the one-step
bilinear warp up to float rounding; a rotation interpolates three times instead of once, same
geometry and support, values within interpolation error of the one-step warp
(tests/test_augment_geometry.py states how close).
How a pass runs depends on the platform, decided when XLA lowers for it (also ahead of time, for
another platform): on TPU and GPU as a matmul with per-line (out, in) bilinear weight matrices
built from iotas, which the TPU compiler fuses into the matmul (the per-pixel gathers and
scatter-adds of the earlier 2-D warp made T cost 0.73 s forward on the TPU cost model at
64x224x224, now 2.2 ms); on CPU as a gather of each output pixel's two source pixels, which XLA
runs there far faster than it builds the dense weights. Both give the same numbers up to
rounding.
The pointwise ops are elementwise, computed for the whole batch and selected per sample with
`jnp.where`; the four PIL enhancers share one blend whose degenerate image is selected first.
Gradients w.r.t. the image:
  - exact for all ops but posterize; the geometric passes are linear in the image, so their
    gradient (the transposed interpolation weights) reaches the source pixels;
  - posterize uses a straight-through estimator (forward: quantised, backward: identity);
  - solarize passes the image gradient (sign flipped above the threshold); its threshold,
    like every magnitude, receives none;
  - cutout passes zero gradient to the erased square (nothing there depends on the image).
Left out: equalize (a per-image histogram lookup: piecewise constant, so zero gradient almost
everywhere, and costly to batch); it would only be usable through a straight-through estimator.
"""
import functools
import math
import numbers

import dm_pix as pix
import jax
import jax.numpy as jnp

OPS = ("identity", "autocontrast", "brightness", "color", "contrast", "sharpness", "posterize",
       "solarize", "invert", "rotate", "shear_x", "shear_y", "translate_x", "translate_y",
       "cutout")
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
ENHANCERS = ("brightness", "color", "contrast", "sharpness")
MAX_ANGLE = 30.0  # degrees at magnitude 1


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
    angle = jnp.deg2rad(MAX_ANGLE) * magnitude * sign
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


def _pass_shifts(op, magnitude, sign, size):
    """Per-sample slopes and offsets of the three passes (N,) each, zero where unused.

    Pass 1 reads row y at x + x1_slope (y - cy) + x1_shift, pass 2 column x at
    y + y_slope (x - cx) + y_shift, pass 3 row y at x + x3_slope (y - cy). Matches
    `_affine_matrices`: S_x(s) = [[1, 0], [s, 1]], S_y(s) = [[1, s], [0, 1]] and the rotation
    [[cos, -sin], [sin, cos]] = S_x(tan a/2) S_y(-sin a) S_x(tan a/2).
    """
    angle = jnp.deg2rad(MAX_ANGLE) * magnitude * sign
    shear = 0.3 * magnitude * sign
    shift = 0.3 * magnitude * sign * size
    rotate, zero = op == OPS.index("rotate"), jnp.zeros_like(magnitude)

    def pick(name, value, otherwise=zero):
        return jnp.where(op == OPS.index(name), value, otherwise)
    half_turn = jnp.where(rotate, jnp.tan(angle / 2), zero)
    return {"x1_slope": pick("shear_x", shear, half_turn),
            "x1_shift": pick("translate_x", shift),
            "y_slope": pick("shear_y", shear, jnp.where(rotate, -jnp.sin(angle), zero)),
            "y_shift": pick("translate_y", shift),
            "x3_slope": half_turn}


def _resample_dense(images, src, axis):
    """`_resample` as an einsum with per-line (out, in) weight matrices max(0, 1 - |src - j|).

    Built from iotas, the weights are fused into the matmul by the TPU compiler, not stored;
    HIGHEST precision keeps the float32 image (and, in the gradient, the cotangent) exact
    instead of rounding it to bfloat16 on the MXU.
    """
    size = images.shape[axis]
    weights = jnp.maximum(0.0, 1.0 - jnp.abs(src[..., None] - jnp.arange(size, dtype=src.dtype)))
    spec = "nyxi,nyic->nyxc" if axis == 2 else "nyxi,nixc->nyxc"
    return jnp.einsum(spec, weights, images, precision=jax.lax.Precision.HIGHEST)


def _resample_gather(images, src, axis):
    """`_resample` as a gather of the two neighbouring source pixels (gradient: scatter-add).

    The blend is an einsum, not elementwise: XLA on CPU fuses the computation of a gather's
    operand into the gather, so an elementwise blend would be recomputed by the next pass at
    every tap (and the passes before it, in turn); a dot ends the fusion.
    """
    size = images.shape[axis]
    left = jnp.floor(src)
    index = jnp.stack([left, jnp.minimum(left + 1, size - 1)], -1).astype(jnp.int32)
    taps = jnp.take_along_axis(images[:, :, :, None, :], index[..., None], axis=axis)
    weights = jnp.stack([1.0 - (src - left), src - left], -1)
    return jnp.einsum("nyxk,nyxkc->nyxc", weights, taps, precision=jax.lax.Precision.HIGHEST)


_RESAMPLERS = {"dense": _resample_dense, "gather": _resample_gather}


def _resample(images, src, axis, impl):
    """Bilinear 1-D resampling along axis 2 (each row) or 1 (each column), edge-replicated.

    images (N, H_in, W_in, C); src (N, H_out, W_out): out[n, y, x] reads the line through
    (y, x) at coordinate src[n, y, x] along `axis` (the other index kept, so H_out = H_in for
    rows, W_out = W_in for columns), clamped to [0, size - 1]:
    (1 - f) images[k] + f images[k + 1], k = floor(src), f = src - k.
    impl: "dense" (matmuls: TPU, GPU), "gather" (per-pixel reads: CPU, where XLA would build
    the dense weights in memory), or None: each platform's choice, made when XLA lowers for it
    (also ahead of time, for another platform).
    """
    src = jnp.clip(src, 0.0, images.shape[axis] - 1.0)
    if impl is not None:
        return _RESAMPLERS[impl](images, src, axis)
    return jax.lax.platform_dependent(
        images, src, cpu=functools.partial(_resample_gather, axis=axis),
        default=functools.partial(_resample_dense, axis=axis))


def _canvas_pad(height, max_magnitude):
    """Columns added on each side for the rotation's intermediate image: |tan(a/2) (y - cy)|."""
    half_angle = math.radians(MAX_ANGLE * max_magnitude / 2)
    return math.ceil(math.tan(half_angle) * (height - 1) / 2 - 1e-9)


def _geometric(images, op, magnitude, sign, max_magnitude, impl):
    """The drawn geometric op of each sample (identity for the others) in three 1-D passes."""
    _, h, w, _ = images.shape
    pad = _canvas_pad(h, max_magnitude)
    s = {k: v[:, None, None] for k, v in _pass_shifts(op, magnitude, sign, h).items()}
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    ys = jnp.arange(h, dtype=jnp.float32)[None, :, None]
    xs = jnp.arange(w, dtype=jnp.float32)[None, None, :]
    canvas_xs = jnp.arange(-pad, w + pad, dtype=jnp.float32)[None, None, :]
    # Pass 1 reads an edge-padded copy (as wide as the canvas: the TPU compiler then fuses
    # its weights into the matmul as for the other passes, instead of storing them).
    padded = jnp.pad(images, ((0, 0), (0, 0), (pad, pad), (0, 0)), mode="edge")
    canvas = _resample(padded, canvas_xs + pad + s["x1_slope"] * (ys - cy) + s["x1_shift"], 2,
                       impl)
    canvas = _resample(canvas, ys + s["y_slope"] * (canvas_xs - cx) + s["y_shift"], 1, impl)
    out = _resample(canvas, xs + pad + s["x3_slope"] * (ys - cy), 2, impl)
    # Cut to the support of the one-step warp, its source points computed as it computed them.
    a, t = _affine_matrices(op, magnitude, sign, h)
    a, centre = a[:, :, :, None, None], jnp.array([cy, cx])
    offset = (centre - jnp.einsum("nij,j->ni", a[..., 0, 0], centre) + t)[:, :, None, None]
    src_y = a[:, 0, 0] * ys + a[:, 0, 1] * xs + offset[:, 0]
    src_x = a[:, 1, 0] * ys + a[:, 1, 1] * xs + offset[:, 1]
    inside = (src_y >= 0) & (src_y <= h - 1) & (src_x >= 0) & (src_x <= w - 1)
    return jnp.where(inside[..., None], out, 0.0)


def _cutout(images, magnitude, key):
    n, h, w, _ = images.shape
    side = 0.5 * magnitude * min(h, w)
    cy, cx = jax.random.uniform(key, (2, n)) * jnp.array([[h], [w]])
    ys, xs = jnp.arange(h)[None, :], jnp.arange(w)[None, :]
    inside_y = jnp.abs(ys + 0.5 - cy[:, None]) < side[:, None] / 2
    inside_x = jnp.abs(xs + 0.5 - cx[:, None]) < side[:, None] / 2
    hole = (inside_y[:, :, None] & inside_x[:, None, :])[..., None]
    return jnp.where(hole, 0.5, images)


def apply_op(images, op, magnitude, sign, key, max_magnitude=1.0, impl=None):
    """Apply op index op[i] with magnitude[i] in [0, max_magnitude] and sign[i] in {-1, 1}.

    images (N, H, W, C) in [0, 1]; op int (N,); magnitude, sign float (N,). Returns the same
    shape, clipped to [0, 1]. max_magnitude (static, at most 3: rotations up to 90 degrees)
    sizes the canvas of the rotation's intermediate image; impl: see `_resample`.
    """
    if not isinstance(max_magnitude, numbers.Real) or not 0 <= max_magnitude <= 3:
        raise ValueError(f"max_magnitude={max_magnitude!r}: choose a number in [0, 3] (static: "
                         "it sizes the canvas of the rotation's intermediate image)")
    if impl not in (None, *_RESAMPLERS):
        raise ValueError(f"impl={impl!r}: choose None or one of {tuple(_RESAMPLERS)}")
    factor = 1.0 + 0.9 * magnitude * sign
    gray = pix.rgb_to_grayscale(images, keep_dims=True) if images.shape[-1] == 3 else images

    def drawn(names):
        return jnp.isin(op, jnp.asarray([OPS.index(name) for name in names]))[:, None, None, None]
    degenerate = jnp.where(drawn(["color"]), gray, 0.0)  # brightness: blend with black
    degenerate = jnp.where(drawn(["contrast"]), jnp.mean(gray, axis=(1, 2, 3), keepdims=True),
                           degenerate)
    degenerate = jnp.where(drawn(["sharpness"]), _smooth(images), degenerate)
    candidates = {
        ENHANCERS: lambda: _blend(degenerate, images, factor),
        ("autocontrast",): lambda: _autocontrast(images),
        ("posterize",): lambda: _posterize(images, magnitude),
        ("solarize",): lambda: jax.vmap(pix.solarize)(images, 1.0 - magnitude),
        ("invert",): lambda: 1.0 - images,
        ("cutout",): lambda: _cutout(images, magnitude, key),
    }
    out = _geometric(images, op, magnitude, sign, max_magnitude, impl)  # identity for the others
    for names, fn in candidates.items():
        out = jnp.where(drawn(names), fn(), out)
    return jnp.clip(out, 0.0, 1.0)


def rand_augment(key, images, num_ops=2, max_magnitude=1.0, ops=OPS, impl=None):
    """RandAugment: `num_ops` random ops per sample, magnitudes U(0, max_magnitude).

    images (N, H, W, C) in [0, 1] -> same shape; differentiable w.r.t. images (see module doc).
    ops: the names drawn from (uniformly), all of OPS by default; e.g. leaving out posterize
    and solarize makes T smooth in the image but for clipping, cutout and the bilinear warps.
    impl: how the geometric passes resample (see `_resample`; None: the platform's choice).
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
        images = apply_op(images, op, magnitude, sign, k_cut, max_magnitude, impl)
    return images
