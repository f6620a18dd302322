"""A CPU-fast equivalent of `models.stylegan2.conv2d_resample`, for training G.

XLA on CPU runs the weight gradient of input-dilated (transposed) convolutions very slowly: the
backward pass of an up-2 modulated conv took about 0.5 s at batch 32 on a 2-core machine. (MGR
never needs G's weight gradient, only its input gradient, which is an ordinary strided conv.)
  - `conv2d_resample` with up=2: the official reference path (FIR upsample, then an ordinary
    convolution at the high resolution with the flipped kernel), which equals the transposed
    convolution followed by the FIR filter that `stylegan2.conv2d_resample` computes.
Equal up to float32 rounding (tests/test_gan.py). `patched_generator_ops()` swaps it into
`models.stylegan2` while a training program is traced, so the trained variables belong to the
unchanged, fixture-verified generator.
"""
import contextlib
import threading

from jax import lax

from mgr_jax.models import stylegan2

_DIMS = ("NHWC", "HWIO", "NHWC")
_LOCK = threading.RLock()
# The originals, bound before any patching (the fallbacks below must not call the patch).
_conv2d_resample_orig = stylegan2.conv2d_resample


def conv2d_resample(x, w, f=None, up=1, padding=0, precision=None):
    """`stylegan2.conv2d_resample`: for up=2, FIR-upsample then convolve (flipped kernel)."""
    if up == 1:
        return _conv2d_resample_orig(x, w, f, up=1, padding=padding, precision=precision)
    if up != 2:
        raise ValueError(f"up must be 1 or 2, got {up}")
    fw = f.shape[-1]
    p0 = padding + (fw + up - 1) // 2
    p1 = padding + (fw - up) // 2
    x = stylegan2.upfirdn2d(x, f, up=up, padding=(p0, p1, p0, p1), gain=up * up)
    if w.shape[0] > 1:
        w = w[::-1, ::-1]  # the transposed conv of the official op is a true convolution
    return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=_DIMS,
                                    precision=precision)


@contextlib.contextmanager
def patched_generator_ops():
    """Within the block, `models.stylegan2` uses the ops above (trace the training programs
    inside it). Restored on exit; a lock keeps concurrent tracers from interleaving."""
    names = {"conv2d_resample": conv2d_resample}
    with _LOCK:
        saved = {n: getattr(stylegan2, n) for n in names}
        try:
            for n, fn in names.items():
                setattr(stylegan2, n, fn)
            yield
        finally:
            for n, fn in saved.items():
                setattr(stylegan2, n, fn)
