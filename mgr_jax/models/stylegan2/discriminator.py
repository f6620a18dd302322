"""StyleGAN2(-ADA) discriminator in Flax, laid out like the official PyTorch `Discriminator`.

Blocks run from the image resolution down to 8 (`b{res}`), then the 4x4 epilogue `b4`:
minibatch standard deviation, 3x3 conv, fc, out. Conditioning is the projection of the official
code: c (one-hot) goes through a mapping network to `cmap` (N, cmap_dim) and the score is
sum(out * cmap) / sqrt(cmap_dim). Variable names follow the official `state_dict` keys
(`b16.conv0.weight` is `params/b16/conv0/weight`); layouts are Flax's (conv weights HWIO, dense
(in, out)), images NHWC in [-1, 1]. Weights are stored raw and scaled at run time (equalized
learning rate). The epilogue's fc flattens channels-first, as the official NCHW flatten does,
so a converted official D would need only the layout transposes.
"""
import math
from typing import Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax

from mgr_jax.models.stylegan2.generator import FullyConnectedLayer
from mgr_jax.models.stylegan2.ops import (
    _ACTIVATIONS,
    _DIMS,
    bias_act,
    normalize_2nd_moment,
    setup_filter,
    upfirdn2d,
)

ARCHITECTURES = ("orig", "skip", "resnet")


def conv2d_down(x, w, f, down=1, padding=0):
    """Correlation with w (kh, kw, I, O), optionally FIR-filtering and downsampling x2.

    down=2 is the official fast path: pad and filter (for 1x1 kernels also subsample) first,
    then a (strided, for kxk) VALID conv; the padding is the one the official op derives from
    the kernel and filter sizes, so output side = input side / 2.
    """
    precision = lax.Precision.HIGHEST
    if down == 1:
        pad = [(padding, padding)] * 2
        return lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=_DIMS,
                                        precision=precision)
    if down != 2:
        raise ValueError(f"down must be 1 or 2, got {down}")
    fw = f.shape[-1]
    p0 = padding + (fw - down + 1) // 2
    p1 = padding + (fw - down) // 2
    if w.shape[0] == 1:
        x = upfirdn2d(x, f, down=down, padding=(p0, p1, p0, p1))
        return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=_DIMS,
                                        precision=precision)
    x = upfirdn2d(x, f, padding=(p0, p1, p0, p1))
    return lax.conv_general_dilated(x, w, (down, down), "VALID", dimension_numbers=_DIMS,
                                    precision=precision)


def downsample2d(x, f, down=2):
    """FIR-filtered x2 downsampling of an image (the `skip` architecture's image path)."""
    fw = f.shape[-1]
    p0, p1 = (fw - down + 1) // 2, (fw - down) // 2
    return upfirdn2d(x, f, down=down, padding=(p0, p1, p0, p1))


class Conv2dLayer(nn.Module):
    """Equalized-lr conv, optional x2 FIR downsampling, bias, activation, gain, clamp."""
    out_channels: int
    kernel_size: int
    activation: str = "linear"
    down: int = 1
    use_bias: bool = True
    resample_filter: Tuple[int, ...] = (1, 3, 3, 1)
    conv_clamp: Optional[float] = None

    @nn.compact
    def __call__(self, x, gain=1.0):
        in_channels = x.shape[-1]
        k = self.kernel_size
        weight = self.param("weight", nn.initializers.normal(1.0),
                            (k, k, in_channels, self.out_channels))
        w = weight * (1.0 / math.sqrt(in_channels * k * k))
        x = conv2d_down(x, w, setup_filter(self.resample_filter), down=self.down,
                        padding=k // 2)
        b = self.param("bias", nn.initializers.zeros, (self.out_channels,)) \
            if self.use_bias else None
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(x, b, act=self.activation,
                        gain=_ACTIVATIONS[self.activation][1] * gain, clamp=clamp)


def minibatch_stddev(x, group_size=4, num_channels=1):
    """Append per-group feature std-devs: (N, H, W, C) -> (N, H, W, C + num_channels).

    As the official MinibatchStdLayer: sample i belongs to group i % (N / G) with
    G = min(group_size, N); channels split into num_channels contiguous groups; the std over the
    group (biased, + 1e-8 inside the sqrt), averaged over pixels and channels of a channel group,
    is broadcast back as extra feature maps. N must be divisible by G.
    """
    n, h, w, c = x.shape
    g = min(group_size, n) if group_size is not None else n
    if n % g:
        raise ValueError(f"batch {n} is not divisible by the minibatch-std group size {g}")
    f = num_channels
    y = x.astype(jnp.float32).reshape(g, n // g, h, w, f, c // f)
    y = y - jnp.mean(y, axis=0)
    y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + 1e-8)  # (n/G, H, W, F, c)
    y = jnp.mean(y, axis=(1, 2, 4))  # (n/G, F)
    y = jnp.tile(y, (g, 1))  # row i is group i % (n/G), as the official repeat
    y = jnp.broadcast_to(y[:, None, None, :], (n, h, w, f)).astype(x.dtype)
    return jnp.concatenate([x, y], axis=-1)


class ConditionMapping(nn.Module):
    """c (N, c_dim) -> cmap (N, cmap_dim): embed, normalise, lrelu fc layers (lr x0.01)."""
    cmap_dim: int
    num_layers: int = 8
    lr_multiplier: float = 0.01

    @nn.compact
    def __call__(self, c):
        x = FullyConnectedLayer(self.cmap_dim, name="embed")(jnp.asarray(c, jnp.float32))
        x = normalize_2nd_moment(x)
        for idx in range(self.num_layers):
            x = FullyConnectedLayer(self.cmap_dim, activation="lrelu",
                                    lr_multiplier=self.lr_multiplier, name=f"fc{idx}")(x)
        return x


class DiscriminatorBlock(nn.Module):
    """One resolution: (x, img) at R -> (x, img) at R/2 (fromrgb at the top block or `skip`)."""
    in_channels: int
    tmp_channels: int
    out_channels: int
    architecture: str = "resnet"
    resample_filter: Tuple[int, ...] = (1, 3, 3, 1)
    conv_clamp: Optional[float] = None

    @nn.compact
    def __call__(self, x, img):
        layer = dict(resample_filter=tuple(self.resample_filter), conv_clamp=self.conv_clamp)
        if self.in_channels == 0 or self.architecture == "skip":
            y = Conv2dLayer(self.tmp_channels, 1, activation="lrelu", name="fromrgb",
                            **layer)(img)
            x = y if x is None else x + y
            img = downsample2d(img, setup_filter(self.resample_filter)) \
                if self.architecture == "skip" else None
        if self.architecture == "resnet":
            y = Conv2dLayer(self.out_channels, 1, down=2, use_bias=False,  # no clamp here
                            resample_filter=tuple(self.resample_filter), name="skip")(
                                x, gain=math.sqrt(0.5))
            x = Conv2dLayer(self.tmp_channels, 3, activation="lrelu", name="conv0", **layer)(x)
            x = Conv2dLayer(self.out_channels, 3, activation="lrelu", down=2, name="conv1",
                            **layer)(x, gain=math.sqrt(0.5))
            x = y + x
        else:
            x = Conv2dLayer(self.tmp_channels, 3, activation="lrelu", name="conv0", **layer)(x)
            x = Conv2dLayer(self.out_channels, 3, activation="lrelu", down=2, name="conv1",
                            **layer)(x)
        return x, img


class DiscriminatorEpilogue(nn.Module):
    """4x4 head: (fromrgb for skip), minibatch std, conv, fc, out, projection -> (N, 1)."""
    in_channels: int
    cmap_dim: int
    architecture: str = "resnet"
    mbstd_group_size: Optional[int] = 4
    mbstd_num_channels: int = 1
    conv_clamp: Optional[float] = None

    @nn.compact
    def __call__(self, x, img, cmap):
        if self.architecture == "skip" or x is None:  # x None: a 4x4 D reads the image here
            y = Conv2dLayer(self.in_channels, 1, activation="lrelu", name="fromrgb")(img)
            x = y if x is None else x + y
        if self.mbstd_num_channels > 0:
            x = minibatch_stddev(x, self.mbstd_group_size, self.mbstd_num_channels)
        x = Conv2dLayer(self.in_channels, 3, activation="lrelu", conv_clamp=self.conv_clamp,
                        name="conv")(x)
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # NCHW flatten order
        x = FullyConnectedLayer(self.in_channels, activation="lrelu", name="fc")(x)
        x = FullyConnectedLayer(1 if self.cmap_dim == 0 else self.cmap_dim, name="out")(x)
        if self.cmap_dim > 0:
            x = jnp.sum(x * cmap, axis=1, keepdims=True) * (1.0 / np.sqrt(self.cmap_dim))
        return x


def channels_per_resolution(img_resolution, channel_base, channel_max):
    """{res: channels} for res = img_resolution, ..., 8, 4 (min(channel_base / res, max))."""
    log2 = int(round(math.log2(img_resolution))) if img_resolution > 0 else 0
    if img_resolution < 4 or 2 ** log2 != img_resolution:
        raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
    return {2 ** i: min(channel_base // 2 ** i, channel_max) for i in range(log2, 1, -1)}


class Discriminator(nn.Module):
    """StyleGAN2 D: images (N, R, R, img_channels), c one-hot (N, c_dim) or None -> (N, 1) logits.

    Any power-of-two resolution >= 4 (at 4 only the epilogue runs). `cmap_dim` None takes the
    official default, the channels at 4x4.
    """
    c_dim: int
    img_resolution: int
    img_channels: int = 3
    architecture: str = "resnet"
    channel_base: int = 32768
    channel_max: int = 512
    cmap_dim: Optional[int] = None
    mapping_layers: int = 8
    conv_clamp: Optional[float] = None
    mbstd_group_size: Optional[int] = 4
    mbstd_num_channels: int = 1
    resample_filter: Tuple[int, ...] = (1, 3, 3, 1)

    @nn.compact
    def __call__(self, img, c=None):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, "
                             f"got {self.architecture!r}")
        channels = channels_per_resolution(self.img_resolution, self.channel_base,
                                           self.channel_max)
        img = jnp.asarray(img, jnp.float32)
        x = None
        for res in sorted(channels, reverse=True)[:-1]:  # every block above 4x4
            in_ch = channels[res] if res < self.img_resolution else 0
            x, img = DiscriminatorBlock(in_ch, channels[res], channels[res // 2],
                                        architecture=self.architecture,
                                        resample_filter=tuple(self.resample_filter),
                                        conv_clamp=self.conv_clamp, name=f"b{res}")(x, img)
        cmap_dim = channels[4] if self.cmap_dim is None else self.cmap_dim
        cmap = None
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this discriminator is conditional (c_dim {self.c_dim}): pass c")
            cmap = ConditionMapping(cmap_dim, self.mapping_layers, name="mapping")(c)
        else:
            cmap_dim = 0
        return DiscriminatorEpilogue(channels[4], cmap_dim, architecture=self.architecture,
                                     mbstd_group_size=self.mbstd_group_size,
                                     mbstd_num_channels=self.mbstd_num_channels,
                                     conv_clamp=self.conv_clamp, name="b4")(x, img, cmap)
