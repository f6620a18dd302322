"""Array ops of the StyleGAN3 / StyleGAN-XL synthesis network, NHWC, jittable, differentiable.

Semantics follow the official reference paths (`torch_utils/ops/upfirdn2d._upfirdn2d_ref`,
`filtered_lrelu._filtered_lrelu_ref`, `bias_act`) and `modulated_conv2d` of
`networks_stylegan3.py`; the arithmetic is arranged for XLA instead:
  * FIR filtering is a sum of shifted slices (XLA's depthwise convolution is slow on CPU);
    upsampling is polyphase (only the non-zero taps of the zero-stuffed signal are summed) and
    downsampling reads strided slices (only the kept outputs are computed).
  * The modulated convolution scales the input, runs one convolution shared by the batch and
    scales the output, instead of a grouped convolution with per-sample weights.
Filters may be numpy arrays or traced arrays (they are variables of the converted model).
Padding tuples are (x0, x1, y0, y1) as in the official ops, x being the width axis.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

_DIMS = ("NHWC", "HWIO", "NHWC")
HIGHEST = lax.Precision.HIGHEST
SQRT2 = math.sqrt(2.0)


def precision_of(dtype):
    """Full float32 precision for float32 (no TF32 / bf16 passes on accelerators)."""
    return HIGHEST if jnp.dtype(dtype) == jnp.float32 else lax.Precision.DEFAULT


def normalize_2nd_moment(x, eps=1e-8):
    """x * rsqrt(mean(x^2) + eps) over the last axis; (N, D) -> (N, D)."""
    return x * lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def leaky_relu(x, slope):
    """max(x, 0) + slope * min(x, 0); slope 1 is the identity (ToRGB)."""
    if slope == 1:
        return x
    return jnp.where(x >= 0, x, x * jnp.asarray(slope, x.dtype))


def _pad_axis(x, lo, hi, axis):
    """Zero-pad (positive) or crop (negative) `x` by lo / hi elements along `axis`."""
    cfg = [(0, 0, 0)] * x.ndim
    cfg[axis] = (lo, hi, 0)
    return lax.pad(x, jnp.zeros((), x.dtype), cfg)


def _correlate_axis(x, taps, size, axis, start=0, stride=1):
    """out[t] = sum_k x[start + t * stride + k] * taps[k] for t < size, along `axis`."""
    out = None
    for k in range(taps.shape[0]):
        first = start + k
        part = lax.slice_in_dim(x, first, first + (size - 1) * stride + 1, stride=stride,
                                axis=axis)
        part = part * taps[k].astype(x.dtype)
        out = part if out is None else out + part
    return out


def _upfir(x, f, up, pad0, pad1, gain, axis):
    """`upfir_axis` in plain JAX ops (polyphase shifted slices)."""
    n, taps = x.shape[axis], f.shape[0]
    size = n * up + pad0 + pad1 - taps + 1
    if size <= 0:
        raise ValueError(f"upfirdn along axis {axis}: {n} samples, up {up}, padding "
                         f"({pad0}, {pad1}) and {taps} taps leave no output")
    g = jnp.flip(f, 0) * gain  # correlation with the flipped filter
    if up == 1:
        return _correlate_axis(_pad_axis(x, pad0, pad1, axis), g, size, axis)
    per_phase = -(-size // up)  # outputs of phase 0, the most of any phase
    phases = []
    for r in range(up):
        k0 = (pad0 - r) % up
        shift = (r + k0 - pad0) // up  # input index of the first tap at phase output 0
        phases.append((g[k0::up], shift))
    lo = max(0, -min(s for _, s in phases))
    hi = max(0, max(per_phase + t.shape[0] - 1 + s for t, s in phases) - n)
    xp = _pad_axis(x, lo, hi, axis)
    outs = []
    for sub, shift in phases:
        if sub.shape[0] == 0:  # fewer taps than phases: this phase is all zeros
            shape = list(x.shape)
            shape[axis] = per_phase
            outs.append(jnp.zeros(shape, x.dtype))
        else:
            outs.append(_correlate_axis(xp, sub, per_phase, axis, start=lo + shift))
    y = jnp.stack(outs, axis=axis + 1)  # (..., per_phase, up, ...): interleave the phases
    shape = list(x.shape)
    shape[axis] = per_phase * up
    return lax.slice_in_dim(y.reshape(shape), 0, size, axis=axis)


def _upfir_adjoint(g, f, up, pad0, gain, axis, n):
    """Transpose of `_upfir` (input length n) applied to g: a strided correlation."""
    taps = f.shape[0]
    # d x[i] = sum_k gp[up * i + pad0 + k] * f[k] * gain, gp = g zero-padded by taps - 1.
    gp = _pad_axis(g, taps - 1, taps - 1, axis)
    lo = max(0, -pad0)
    hi = max(0, up * (n - 1) + pad0 + taps - gp.shape[axis])
    gp = _pad_axis(gp, lo, hi, axis)
    return _correlate_axis(gp, f * gain, n, axis, start=pad0 + lo, stride=up)


def _firdown(x, f, down, axis):
    """`firdown_axis` in plain JAX ops (strided shifted slices)."""
    size = -(-(x.shape[axis] - f.shape[0] + 1) // down)
    return _correlate_axis(x, jnp.flip(f, 0), size, axis, stride=down)


def _firdown_adjoint(g, f, down, axis, n):
    """Transpose of `_firdown` (input length n) applied to g: zero-stuff, full convolution."""
    taps, m = f.shape[0], g.shape[axis]
    return _upfir(g, jnp.flip(f, 0), down, taps - 1, n - m * down, 1.0, axis)


# The FIR ops carry their own VJPs: JAX's transpose of many shifted slices (one full-size pad
# per tap) runs ~10-50x slower than the forward op on CPU; the adjoint is itself an FIR op.
# The backward passes are plain JAX, so forward-over-reverse (jax.linearize of a gradient, as
# the exact hypergradient uses) works; forward mode through the ops themselves (jax.jvp with
# a tangent on their input) does not. Filters are constants: their cotangent is zero.


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def upfir_axis(x, f, up, pad0, pad1, gain, axis):
    """Zero-stuff by `up`, pad/crop by (pad0, pad1), convolve with 1-D `f` * gain, on `axis`.

    Equals the official upfirdn2d along one axis: each sample is followed by up-1 zeros (length
    n*up), then the padding (negative crops), then a true convolution with f, keeping only
    outputs whose footprint lies inside. Output length n*up + pad0 + pad1 - len(f) + 1.
    Computed polyphase: output phase r of every `up` uses the taps f[k] with
    k = (pad0 - r) mod up (mod up) on consecutive input samples.
    """
    return _upfir(x, f, up, pad0, pad1, gain, axis)


def _upfir_fwd(x, f, up, pad0, pad1, gain, axis):
    return _upfir(x, f, up, pad0, pad1, gain, axis), (f, x.shape[axis])


def _upfir_bwd(up, pad0, pad1, gain, axis, res, g):
    f, n = res
    return _upfir_adjoint(g, f, up, pad0, gain, axis, n), jnp.zeros_like(f)


upfir_axis.defvjp(_upfir_fwd, _upfir_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def firdown_axis(x, f, down, axis):
    """Convolve with 1-D `f` (valid) and keep every `down`-th output, along `axis`."""
    return _firdown(x, f, down, axis)


def _firdown_fwd(x, f, down, axis):
    return _firdown(x, f, down, axis), (f, x.shape[axis])


def _firdown_bwd(down, axis, res, g):
    f, n = res
    return _firdown_adjoint(g, f, down, axis, n), jnp.zeros_like(f)


firdown_axis.defvjp(_firdown_fwd, _firdown_bwd)


def firdown_2d(x, f, down):
    """Convolve NHWC `x` with a 2-D filter f (fh, fw) (valid), keep every `down`-th pixel."""
    f = jnp.flip(jnp.asarray(f), (0, 1))
    fh, fw = f.shape
    out_h = -(-(x.shape[1] - fh + 1) // down)
    out_w = -(-(x.shape[2] - fw + 1) // down)
    out = None
    for i in range(fh):
        rows = lax.slice_in_dim(x, i, i + (out_h - 1) * down + 1, stride=down, axis=1)
        part = _correlate_axis(rows, f[i], out_w, 2, stride=down)
        out = part if out is None else out + part
    return out


def upsample_2d(x, fu, up, padding):
    """upfirdn2d(x, fu, up=up, padding, gain=up^2) for a separable 1-D filter or None; NHWC."""
    px0, px1, py0, py1 = padding
    if fu is None:
        fu = jnp.ones((1,), jnp.float32)
    if jnp.ndim(fu) != 1:
        raise NotImplementedError("only separable (1-D) upsampling filters are supported")
    fu = jnp.asarray(fu, jnp.float32)
    x = upfir_axis(x, fu, up, px0, px1, float(up), 2)  # gain up^2 split as up per axis
    return upfir_axis(x, fu, up, py0, py1, float(up), 1)


def downsample_2d(x, fd, down):
    """upfirdn2d(x, fd, down=down) for a 1-D (separable), 2-D (radial) filter or None; NHWC."""
    if fd is None:
        return x[:, ::down, ::down, :] if down > 1 else x
    if jnp.ndim(fd) == 2:
        return firdown_2d(x, fd, down)
    fd = jnp.asarray(fd, jnp.float32)
    return firdown_axis(firdown_axis(x, fd, down, 2), fd, down, 1)


def filtered_lrelu(x, fu, fd, b, up, down, padding, gain=SQRT2, slope=0.2, clamp=None):
    """Bias, upsample (fu), leaky ReLU * gain, clamp, downsample (fd); NHWC -> NHWC.

    x (N, H, W, C); b (C,); padding (x0, x1, y0, y1) w.r.t. the upsampled image. Output
    (N, (H*up + py0 + py1 - len(fu) - len(fd) + 2 + down - 1) // down, ..., C).
    """
    x = x + b.astype(x.dtype)
    x = upsample_2d(x, fu, up, padding)
    x = leaky_relu(x, slope)
    if gain != 1:
        x = x * jnp.asarray(gain, x.dtype)
    if clamp is not None:
        x = jnp.clip(x, -clamp, clamp)
    return downsample_2d(x, fd, down)


def modulated_conv2d(x, weight, styles, demodulate, padding, input_gain=None):
    """StyleGAN3 modulated convolution; x (N, H, W, I), weight (k, k, I, O), styles (N, I).

    Returns (N, H + 2p - k + 1, W + 2p - k + 1, O). As the official op: with demodulation the
    weight is first normalised per output channel and the styles by their RMS over the whole
    batch (only the 1e-8 of the demodulation sees that scale), then each sample's weight
    w * s is scaled to unit norm per output channel; input_gain (a scalar) scales the input.
    Equal to the official per-sample weights, computed as (x * s) conv w, times the
    demodulation coefficients.
    """
    dtype = x.dtype
    w = weight.astype(jnp.float32)
    s = styles.astype(jnp.float32)
    if demodulate:
        w = w * lax.rsqrt(jnp.mean(jnp.square(w), axis=(0, 1, 2), keepdims=True))
        s = s * lax.rsqrt(jnp.mean(jnp.square(s)))
    scale = s if input_gain is None else s * input_gain
    x = x * scale[:, None, None, :].astype(dtype)
    x = lax.conv_general_dilated(x, w.astype(dtype), (1, 1), [(padding, padding)] * 2,
                                 dimension_numbers=_DIMS, precision=precision_of(dtype))
    if demodulate:
        wsq = jnp.sum(jnp.square(w), axis=(0, 1))  # (I, O)
        dcoefs = lax.rsqrt(jnp.matmul(jnp.square(s), wsq, precision=HIGHEST) + 1e-8)
        x = x * dcoefs[:, None, None, :].astype(dtype)
    return x
