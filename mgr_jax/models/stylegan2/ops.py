"""StyleGAN2 operations as plain functions: bias_act, FIR filtering (upfirdn2d), resampling
convolutions, modulated convolution. NHWC activations, HWIO kernels, float32 unless told.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# name -> (function, default gain); the gains are the official `def_gain` values.
_ACTIVATIONS = {
    "linear": (lambda x: x, 1.0),
    "relu": (jax.nn.relu, math.sqrt(2.0)),
    "lrelu": (lambda x: jnp.where(x >= 0, x, 0.2 * x), math.sqrt(2.0)),
}
_DIMS = ("NHWC", "HWIO", "NHWC")


def _precision(dtype):
    """Full float32 precision for float32 compute (no TF32 on GPUs), the default otherwise."""
    return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else lax.Precision.DEFAULT


def bias_act(x, b=None, act="linear", gain=None, clamp=None):
    """x + b (on the last axis), activation, times gain (default: the activation's), clamp."""
    fn, def_gain = _ACTIVATIONS[act]
    if b is not None:
        x = x + b.astype(x.dtype)
    x = fn(x)
    gain = def_gain if gain is None else gain
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = jnp.clip(x, -clamp, clamp)
    return x


def normalize_2nd_moment(x, eps=1e-8):
    """x / sqrt(mean(x^2) + eps) over the last axis; (N, D) -> (N, D)."""
    return x * lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def setup_filter(taps):
    """2-D FIR filter (fh, fw) from 1-D taps: outer product, normalised to sum 1 (numpy)."""
    f = np.asarray(taps, np.float32)
    if f.ndim == 1:
        f = np.outer(f, f)
    return f / f.sum()


def upfirdn2d(x, f, up=1, down=1, padding=(0, 0, 0, 0), gain=1.0, flip_filter=False):
    """Upsample (zero insertion), pad/crop, FIR filter, downsample; NHWC -> NHWC.

    Same semantics as the official op: every input pixel is followed by up-1 zeros, `padding` is
    (x0, x1, y0, y1) and may be negative (crop), the 2-D filter is scaled by `gain` and applied as
    a true convolution (flipped) unless `flip_filter`. Separable filters (all that
    `setup_filter` makes) run as two 1-D passes of weighted shifted slices: XLA on CPU runs the
    equivalent depthwise convolution (`fir_depthwise`, used for any other filter) 10-60x slower.
    """
    px0, px1, py0, py1 = padding
    # lax.pad does zero insertion (interior), the trailing zeros and the pad/crop in one go.
    cfg = [(0, 0, 0), (py0, py1 + up - 1, up - 1), (px0, px1 + up - 1, up - 1), (0, 0, 0)]
    x = lax.pad(x, jnp.zeros((), x.dtype), cfg)
    taps = separable_taps(f)
    if taps is None:
        f = np.asarray(f, np.float32) * gain
        x = fir_depthwise(x, f if flip_filter else f[::-1, ::-1])
    else:
        v, h = taps
        if not flip_filter:  # a true convolution: correlate with the reversed taps
            v, h = v[::-1], h[::-1]
        x = _fir_axis(_fir_axis(x, v * gain, 1), h, 2)
    return x[:, ::down, ::down, :] if down > 1 else x


def fir_depthwise(x, f):
    """Valid 2-D correlation of every channel of x (NHWC) with the filter f (fh, fw)."""
    channels = x.shape[-1]
    kernel = jnp.asarray(np.tile(np.asarray(f)[:, :, None, None], (1, 1, 1, channels)), x.dtype)
    return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_DIMS,
                                    feature_group_count=channels, precision=_precision(x.dtype))


def separable_taps(f):
    """(vertical, horizontal) 1-D taps with outer(v, h) == f, or None if f is not separable."""
    f = np.asarray(f, np.float64)
    if f.ndim == 1:
        return f, f
    v, h = f.sum(axis=1), f.sum(axis=0)
    total = f.sum()
    if total == 0 or not np.allclose(np.outer(v, h) / total, f, rtol=1e-6, atol=1e-9):
        return None
    return v / total, h


def _fir_axis(x, taps, axis):
    """Valid correlation of x with the 1-D `taps` along `axis`, as a sum of shifted slices."""
    size = x.shape[axis] - len(taps) + 1
    out = None
    for i, t in enumerate(taps):
        if t == 0:
            continue
        part = lax.slice_in_dim(x, i, i + size, axis=axis) * jnp.asarray(t, x.dtype)
        out = part if out is None else out + part
    return out


def upsample2d(x, f, up=2):
    """Upsample by `up` with the FIR filter `f` (gain up^2 keeps the mean); NHWC -> NHWC."""
    fw = f.shape[-1]
    p0, p1 = (fw + up - 1) // 2, (fw - up) // 2
    return upfirdn2d(x, f, up=up, padding=(p0, p1, p0, p1), gain=up * up)


def conv2d_resample(x, w, f=None, up=1, padding=0, precision=None, impl="transposed"):
    """Correlation with w (kh, kw, I, O), optionally upsampling x2 with filter f first.

    For up=2 this is the official transposed-convolution path: stride-2 transposed conv, then the
    FIR filter with the padding the official op derives from the kernel and filter sizes.
    impl="fir_first" computes the same for up=2 as the official reference path instead: FIR
    upsample, then an ordinary convolution at the high resolution with the flipped kernel. Equal
    up to float32 rounding; on XLA:CPU its weight gradient is far cheaper than the transposed
    convolution's (0.5 s for an up-2 layer at batch 32 on 2 cores), so the GAN trainer uses it.
    """
    kh = w.shape[0]
    if up == 1:
        pad = [(padding, padding)] * 2
        return lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=_DIMS,
                                        precision=precision)
    if up != 2:
        raise ValueError(f"up must be 1 or 2, got {up}")
    fw = f.shape[-1]
    p0 = padding + (fw + up - 1) // 2
    p1 = padding + (fw - up) // 2
    if impl not in ("transposed", "fir_first"):
        raise ValueError(f"impl must be 'transposed' or 'fir_first', got {impl!r}")
    if kh == 1 or impl == "fir_first":  # 1x1 kernels: filter first is cheaper, same result.
        x = upfirdn2d(x, f, up=up, padding=(p0, p1, p0, p1), gain=up * up)
        if kh > 1:
            w = w[::-1, ::-1]  # the official transposed conv is a true convolution
        return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=_DIMS,
                                        precision=precision)
    p0 -= kh - 1
    p1 -= kh - up
    pt = max(min(-p0, -p1), 0)
    # torch conv_transpose2d(x, w, stride 2, padding pt) == correlation of the 2x-dilated input,
    # padded by k-1-pt, with the spatially flipped kernel.
    pad = [(kh - 1 - pt, kh - 1 - pt)] * 2
    x = lax.conv_general_dilated(x, w[::-1, ::-1], (1, 1), pad, lhs_dilation=(up, up),
                                 dimension_numbers=_DIMS, precision=precision)
    return upfirdn2d(x, f, padding=(p0 + pt, p1 + pt, p0 + pt, p1 + pt), gain=up * up)


def modulated_conv2d(x, weight, styles, noise=None, up=1, padding=0, resample_filter=None,
                     demodulate=True, dtype=jnp.float32, upsample_impl="transposed"):
    """StyleGAN2 modulated conv: x (N,H,W,I), weight (k,k,I,O), styles (N,I) -> (N,H',W',O).

    Computed as scale-input, shared-weight conv, scale-output (the official non-fused path),
    which equals a per-sample conv with weight * styles, demodulated to unit norm per output.
    """
    precision = _precision(dtype)
    styles = styles.astype(jnp.float32)
    weight = weight.astype(jnp.float32)
    x = x.astype(dtype) * styles[:, None, None, :].astype(dtype)
    x = conv2d_resample(x, weight.astype(dtype), resample_filter, up=up, padding=padding,
                        precision=precision, impl=upsample_impl)
    if demodulate:
        # sum over (i, kh, kw) of (w * s_i)^2 = s^2 @ sum_k w^2: (N, I) @ (I, O).
        wsq = jnp.sum(jnp.square(weight), axis=(0, 1))
        dcoefs = lax.rsqrt(jnp.matmul(jnp.square(styles), wsq, precision=lax.Precision.HIGHEST)
                           + 1e-8)
        x = x * dcoefs[:, None, None, :].astype(x.dtype)
    if noise is not None:
        x = x + noise.astype(x.dtype)
    return x
