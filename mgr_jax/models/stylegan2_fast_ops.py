"""CPU-fast equivalents of `models.stylegan2`'s resampling ops, for training.

XLA on CPU runs depthwise (feature-grouped) convolutions and the weight gradient of
input-dilated (transposed) convolutions very slowly: on a 2-core machine the FIR filter of
`stylegan2.upfirdn2d` took 65 ms where the same arithmetic as shifted slices takes 1 ms, and
the backward pass of an up-2 modulated conv about 0.5 s at batch 32. These versions compute the
same functions:
  - `upfirdn2d`: the 2-D filter of `setup_filter` is an outer product, so it is applied as two
    1-D passes of weighted shifted slices (any non-separable filter falls back to the original);
  - `conv2d_resample` with up=2: the official reference path (FIR upsample, then an ordinary
    convolution at the high resolution with the flipped kernel), which equals the transposed
    convolution followed by the FIR filter that `stylegan2.conv2d_resample` computes.
Equal up to float32 rounding (tests/test_gan.py). `patched_generator_ops()` swaps them into
`models.stylegan2` while a training program is traced, so the trained variables belong to the
unchanged, fixture-verified generator.
"""
import contextlib
import threading

import numpy as np
from jax import lax

from mgr_jax.models import stylegan2

_DIMS = ("NHWC", "HWIO", "NHWC")
_LOCK = threading.RLock()
# The originals, bound before any patching (the fallbacks below must not call the patch).
_upfirdn2d_orig = stylegan2.upfirdn2d
_conv2d_resample_orig = stylegan2.conv2d_resample


def _separable_taps(f):
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
    """Valid correlation of x with 1-D `taps` along `axis` as a sum of shifted slices."""
    k = len(taps)
    size = x.shape[axis] - k + 1
    out = None
    for i, t in enumerate(taps):
        if t == 0:
            continue
        part = lax.slice_in_dim(x, i, i + size, axis=axis) * float(t)
        out = part if out is None else out + part
    return out


def upfirdn2d(x, f, up=1, down=1, padding=(0, 0, 0, 0), gain=1.0, flip_filter=False):
    """`stylegan2.upfirdn2d` (same arguments and result) with the filter as shifted slices."""
    taps = _separable_taps(f)
    if taps is None:
        return _upfirdn2d_orig(x, f, up, down, padding, gain, flip_filter)
    v, h = taps
    if not flip_filter:  # a true convolution: correlate with the reversed taps
        v, h = v[::-1], h[::-1]
    v, h = v * gain, h  # the gain scales the 2-D filter once
    px0, px1, py0, py1 = padding
    cfg = [(0, 0, 0), (py0, py1 + up - 1, up - 1), (px0, px1 + up - 1, up - 1), (0, 0, 0)]
    x = lax.pad(x, np.zeros((), x.dtype), cfg)
    x = _fir_axis(_fir_axis(x, v, 1), h, 2)
    return x[:, ::down, ::down, :] if down > 1 else x


def upsample2d(x, f, up=2):
    """`stylegan2.upsample2d` on the fast filter."""
    fw = f.shape[-1]
    p0, p1 = (fw + up - 1) // 2, (fw - up) // 2
    return upfirdn2d(x, f, up=up, padding=(p0, p1, p0, p1), gain=up * up)


def conv2d_resample(x, w, f=None, up=1, padding=0, precision=None):
    """`stylegan2.conv2d_resample`: for up=2, FIR-upsample then convolve (flipped kernel)."""
    if up == 1:
        return _conv2d_resample_orig(x, w, f, up=1, padding=padding, precision=precision)
    if up != 2:
        raise ValueError(f"up must be 1 or 2, got {up}")
    fw = f.shape[-1]
    p0 = padding + (fw + up - 1) // 2
    p1 = padding + (fw - up) // 2
    x = upfirdn2d(x, f, up=up, padding=(p0, p1, p0, p1), gain=up * up)
    if w.shape[0] > 1:
        w = w[::-1, ::-1]  # the transposed conv of the official op is a true convolution
    return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=_DIMS,
                                    precision=precision)


@contextlib.contextmanager
def patched_generator_ops():
    """Within the block, `models.stylegan2` uses the ops above (trace the training programs
    inside it). Restored on exit; a lock keeps concurrent tracers from interleaving."""
    names = {"upfirdn2d": upfirdn2d, "upsample2d": upsample2d,
             "conv2d_resample": conv2d_resample}
    with _LOCK:
        saved = {n: getattr(stylegan2, n) for n in names}
        try:
            for n, fn in names.items():
                setattr(stylegan2, n, fn)
            yield
        finally:
            for n, fn in saved.items():
                setattr(stylegan2, n, fn)
