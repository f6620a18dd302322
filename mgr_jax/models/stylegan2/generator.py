"""StyleGAN2-ADA generator (Karras et al., 2020) in Flax, laid out like the official PyTorch code.

Module and variable names follow the official `state_dict` keys so that conversion is one explicit
map: torch `synthesis.b8.conv0.affine.weight` is Flax `params/synthesis/b8/conv0/affine/weight`,
`synthesis.b8.conv0.noise_const` is `buffers/synthesis/b8/conv0/noise_const`. Layouts are Flax's:
dense weights (in, out), conv weights HWIO (kh, kw, in, out), constant input (R, R, C), images
NHWC. Weights are stored raw and scaled at run time (equalized learning rate), as the original.

Images come out NHWC float32 in G's output scale (about [-1, 1], unclipped). The fp16 blocks of
the original are computed in float32 here (as the fixtures were made); `dtype="bfloat16"` runs
the synthesis convolutions in bfloat16 instead, for speed.
"""
import math
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mgr_jax.models.stylegan2.ops import (
    _ACTIVATIONS,
    _precision,
    bias_act,
    conv2d_resample,
    modulated_conv2d,
    normalize_2nd_moment,
    setup_filter,
    upsample2d,
)


class FullyConnectedLayer(nn.Module):
    """Equalized-lr dense layer: y = act(x @ (W * lr/sqrt(in)) + b * lr); (N, in) -> (N, out)."""
    features: int
    activation: str = "linear"
    lr_multiplier: float = 1.0
    bias_init: float = 0.0
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        in_features = x.shape[-1]
        lr = self.lr_multiplier
        weight = self.param(
            "weight", lambda k, s: jax.random.normal(k, s) / lr, (in_features, self.features))
        x = jnp.matmul(x.astype(jnp.float32), weight * (lr / math.sqrt(in_features)),
                       precision=lax.Precision.HIGHEST)
        b = None
        if self.use_bias:
            b = self.param("bias", lambda k, s: jnp.full(s, self.bias_init, jnp.float32),
                           (self.features,)) * lr
        return bias_act(x, b, act=self.activation)


class MappingNetwork(nn.Module):
    """z (N, z_dim), c (N, c_dim) -> ws (N, num_ws, w_dim), with truncation toward w_avg."""
    z_dim: int
    c_dim: int
    w_dim: int
    num_ws: int
    num_layers: int = 8
    embed_features: Optional[int] = None
    layer_features: Optional[int] = None
    activation: str = "lrelu"
    lr_multiplier: float = 0.01

    @nn.compact
    def __call__(self, z, c, truncation_psi=1.0, truncation_cutoff=None):
        layer_features = self.w_dim if self.layer_features is None else self.layer_features
        embed_features = self.w_dim if self.embed_features is None else self.embed_features
        w_avg = self.variable("buffers", "w_avg", jnp.zeros, (self.w_dim,), jnp.float32).value
        parts = []
        if self.z_dim > 0:
            parts.append(normalize_2nd_moment(jnp.asarray(z, jnp.float32)))
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this generator is conditional (c_dim {self.c_dim}): pass c")
            y = FullyConnectedLayer(embed_features, name="embed")(jnp.asarray(c, jnp.float32))
            parts.append(normalize_2nd_moment(y))
        x = jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        for idx in range(self.num_layers):
            features = self.w_dim if idx == self.num_layers - 1 else layer_features
            x = FullyConnectedLayer(features, activation=self.activation,
                                    lr_multiplier=self.lr_multiplier, name=f"fc{idx}")(x)
        ws = jnp.broadcast_to(x[:, None, :], (x.shape[0], self.num_ws, self.w_dim))
        return truncate(ws, w_avg, truncation_psi, truncation_cutoff)


def truncate(ws, w_avg, psi=1.0, cutoff=None):
    """Move ws (N, num_ws, w_dim) toward w_avg: w_avg + psi (w - w_avg) for ws index < cutoff.

    cutoff None truncates every w; an int follows the official `ws[:, :cutoff]` slice (so a
    negative cutoff counts from the end). No in-place update: a mask over the ws index.
    """
    if isinstance(psi, (int, float)) and psi == 1:
        return ws  # the official code skips the lerp; keep ws bit-identical
    moved = w_avg + psi * (ws - w_avg)
    if cutoff is None:
        return moved
    idx = jnp.arange(ws.shape[1])
    keep = idx < len(range(ws.shape[1])[:cutoff])
    return jnp.where(keep[None, :, None], moved, ws)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (+ optional x2 upsample), noise, bias, lrelu; (N,H,W,I) -> (N,R,R,O)."""
    out_channels: int
    resolution: int
    kernel_size: int = 3
    up: int = 1
    use_noise: bool = True
    activation: str = "lrelu"
    resample_filter: Tuple[int, ...] = (1, 3, 3, 1)
    conv_clamp: Optional[float] = None
    dtype: Any = "float32"
    upsample_impl: str = "transposed"  # or "fir_first": see ops.conv2d_resample

    @nn.compact
    def __call__(self, x, w, noise_mode="const", gain=1.0):
        in_channels = x.shape[-1]
        k = self.kernel_size
        styles = FullyConnectedLayer(in_channels, bias_init=1.0, name="affine")(w)
        weight = self.param("weight", nn.initializers.normal(1.0),
                            (k, k, in_channels, self.out_channels))
        noise = None
        if self.use_noise:
            res = self.resolution
            noise_const = self.variable(
                "buffers", "noise_const",
                lambda: jax.random.normal(self.make_rng("params"), (res, res))).value
            strength = self.param("noise_strength", nn.initializers.zeros, ())
            if noise_mode == "random":
                noise = jax.random.normal(self.make_rng("noise"), (x.shape[0], res, res, 1))
                noise = noise * strength
            elif noise_mode == "const":
                noise = (noise_const * strength)[:, :, None]
            elif noise_mode != "none":
                raise ValueError(f"noise_mode must be const, random or none, got {noise_mode!r}")
        x = modulated_conv2d(x, weight, styles, noise=noise, up=self.up, padding=k // 2,
                             resample_filter=setup_filter(self.resample_filter), dtype=self.dtype,
                             upsample_impl=self.upsample_impl)
        bias = self.param("bias", nn.initializers.zeros, (self.out_channels,))
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(x, bias, act=self.activation,
                        gain=_ACTIVATIONS[self.activation][1] * gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv without demodulation, bias, clamp; (N,H,W,I) -> (N,H,W,img_ch)."""
    out_channels: int
    conv_clamp: Optional[float] = None
    dtype: Any = "float32"

    @nn.compact
    def __call__(self, x, w):
        in_channels = x.shape[-1]
        styles = FullyConnectedLayer(in_channels, bias_init=1.0, name="affine")(w)
        styles = styles * (1.0 / math.sqrt(in_channels))
        weight = self.param("weight", nn.initializers.normal(1.0),
                            (1, 1, in_channels, self.out_channels))
        x = modulated_conv2d(x, weight, styles, demodulate=False, dtype=self.dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.out_channels,))
        return bias_act(x.astype(jnp.float32), bias, clamp=self.conv_clamp)


class SkipLayer(nn.Module):
    """resnet shortcut: x2 FIR upsample, 1x1 conv, gain sqrt(0.5); (N,H,W,I) -> (N,2H,2W,O)."""
    out_channels: int
    resample_filter: Tuple[int, ...] = (1, 3, 3, 1)
    dtype: Any = "float32"

    @nn.compact
    def __call__(self, x):
        in_channels = x.shape[-1]
        weight = self.param("weight", nn.initializers.normal(1.0),
                            (1, 1, in_channels, self.out_channels))
        weight = (weight * (1.0 / math.sqrt(in_channels))).astype(self.dtype)
        x = conv2d_resample(x.astype(self.dtype), weight, setup_filter(self.resample_filter),
                            up=2, precision=_precision(self.dtype))
        return x * math.sqrt(0.5)


def block_layout(img_resolution, channel_base, channel_max, architecture):
    """Per block, 4 to img_resolution: (res, in_channels, out_channels, num_conv, num_torgb)."""
    log2 = int(round(math.log2(img_resolution)))
    if img_resolution < 4 or 2 ** log2 != img_resolution:
        raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
    if architecture not in ("orig", "skip", "resnet"):
        raise ValueError(f"architecture must be orig, skip or resnet, got {architecture!r}")
    resolutions = [2 ** i for i in range(2, log2 + 1)]
    channels = {res: min(channel_base // res, channel_max) for res in resolutions}
    layout = []
    for res in resolutions:
        in_ch = channels[res // 2] if res > 4 else 0
        is_last = res == img_resolution
        num_torgb = 1 if (is_last or architecture == "skip") else 0
        layout.append((res, in_ch, channels[res], 1 if in_ch == 0 else 2, num_torgb))
    return layout


def count_ws(img_resolution, channel_base=32768, channel_max=512, architecture="skip"):
    """Number of ws the synthesis network consumes: every conv, plus the last ToRGB."""
    layout = block_layout(img_resolution, channel_base, channel_max, architecture)
    return sum(b[3] for b in layout) + layout[-1][4]


class SynthesisBlock(nn.Module):
    """One resolution: (x, img) at R/2 -> (x, img) at R, consuming ws (N, num_conv+num_torgb, w)."""
    in_channels: int
    out_channels: int
    resolution: int
    img_channels: int
    is_last: bool
    architecture: str = "skip"
    resample_filter: Tuple[int, ...] = (1, 3, 3, 1)
    conv_clamp: Optional[float] = None
    use_noise: bool = True
    dtype: Any = "float32"
    upsample_impl: str = "transposed"

    @nn.compact
    def __call__(self, x, img, ws, noise_mode="const"):
        layer = dict(resolution=self.resolution, use_noise=self.use_noise,
                     resample_filter=tuple(self.resample_filter), conv_clamp=self.conv_clamp,
                     dtype=self.dtype, upsample_impl=self.upsample_impl)
        n = ws.shape[0]
        if self.in_channels == 0:
            r = self.resolution
            const = self.param("const", nn.initializers.normal(1.0), (r, r, self.out_channels))
            x = jnp.broadcast_to(const[None].astype(self.dtype), (n,) + const.shape)
            x = SynthesisLayer(self.out_channels, name="conv1", **layer)(x, ws[:, 0], noise_mode)
            wi = 1
        elif self.architecture == "resnet":
            y = SkipLayer(self.out_channels, tuple(self.resample_filter), self.dtype,
                          name="skip")(x)
            x = SynthesisLayer(self.out_channels, up=2, name="conv0", **layer)(
                x, ws[:, 0], noise_mode)
            x = SynthesisLayer(self.out_channels, name="conv1", **layer)(
                x, ws[:, 1], noise_mode, gain=math.sqrt(0.5))
            x = y.astype(x.dtype) + x
            wi = 2
        else:
            x = SynthesisLayer(self.out_channels, up=2, name="conv0", **layer)(
                x, ws[:, 0], noise_mode)
            x = SynthesisLayer(self.out_channels, name="conv1", **layer)(x, ws[:, 1], noise_mode)
            wi = 2
        if img is not None:
            img = upsample2d(img, setup_filter(self.resample_filter))
        if self.is_last or self.architecture == "skip":
            y = ToRGBLayer(self.img_channels, self.conv_clamp, self.dtype, name="torgb")(
                x, ws[:, wi])
            img = y if img is None else img + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws (N, num_ws, w_dim) -> images (N, R, R, img_channels) float32."""
    w_dim: int
    img_resolution: int
    img_channels: int
    channel_base: int = 32768
    channel_max: int = 512
    architecture: str = "skip"
    conv_clamp: Optional[float] = None
    resample_filter: Tuple[int, ...] = (1, 3, 3, 1)
    use_noise: bool = True
    dtype: Any = "float32"
    upsample_impl: str = "transposed"

    @nn.compact
    def __call__(self, ws, noise_mode="const"):
        layout = block_layout(self.img_resolution, self.channel_base, self.channel_max,
                              self.architecture)
        x = img = None
        w_idx = 0
        for res, in_ch, out_ch, num_conv, num_torgb in layout:
            block_ws = ws[:, w_idx:w_idx + num_conv + num_torgb]
            w_idx += num_conv  # a non-last ToRGB shares its w with the next block's first conv
            x, img = SynthesisBlock(
                in_ch, out_ch, res, self.img_channels, res == self.img_resolution,
                architecture=self.architecture, resample_filter=tuple(self.resample_filter),
                conv_clamp=self.conv_clamp, use_noise=self.use_noise, dtype=self.dtype,
                upsample_impl=self.upsample_impl, name=f"b{res}")(x, img, block_ws, noise_mode)
        return img.astype(jnp.float32)


class Generator(nn.Module):
    """StyleGAN2-ADA generator: (z (N, z_dim), c one-hot (N, c_dim) or None) -> NHWC images.

    `apply(v, z, c, truncation_psi, truncation_cutoff, noise_mode)` -> (N, R, R, img_channels);
    `method="mapping"` -> ws (N, num_ws, w_dim); `method="synthesis"` maps ws -> images.
    noise_mode "random" draws from `rngs={"noise": key}`.
    """
    z_dim: int
    c_dim: int
    w_dim: int
    img_resolution: int
    img_channels: int = 3
    mapping_layers: int = 8
    embed_features: Optional[int] = None
    layer_features: Optional[int] = None
    mapping_activation: str = "lrelu"
    mapping_lr_multiplier: float = 0.01
    channel_base: int = 32768
    channel_max: int = 512
    architecture: str = "skip"
    conv_clamp: Optional[float] = None
    resample_filter: Sequence[int] = (1, 3, 3, 1)
    use_noise: bool = True
    dtype: Any = "float32"
    # "fir_first": the same function with a cheaper weight gradient on CPU (ops.conv2d_resample);
    # the variables do not depend on it.
    upsample_impl: str = "transposed"

    @property
    def num_ws(self):
        """Number of ws the synthesis network takes."""
        return count_ws(self.img_resolution, self.channel_base, self.channel_max,
                        self.architecture)

    def setup(self):
        self.mapping_net = MappingNetwork(
            self.z_dim, self.c_dim, self.w_dim, self.num_ws, num_layers=self.mapping_layers,
            embed_features=self.embed_features, layer_features=self.layer_features,
            activation=self.mapping_activation, lr_multiplier=self.mapping_lr_multiplier,
            name="mapping")
        self.synthesis_net = SynthesisNetwork(
            self.w_dim, self.img_resolution, self.img_channels, channel_base=self.channel_base,
            channel_max=self.channel_max, architecture=self.architecture,
            conv_clamp=self.conv_clamp, resample_filter=tuple(self.resample_filter),
            use_noise=self.use_noise, dtype=self.dtype, upsample_impl=self.upsample_impl,
            name="synthesis")

    def __call__(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None,
                 noise_mode="const"):
        """(N, z_dim), (N, c_dim) -> (N, R, R, img_channels) float32, unclipped."""
        ws = self.mapping_net(z, c, truncation_psi, truncation_cutoff)
        return self.synthesis_net(ws, noise_mode)

    def mapping(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None):
        """(N, z_dim), (N, c_dim) -> ws (N, num_ws, w_dim)."""
        return self.mapping_net(z, c, truncation_psi, truncation_cutoff)

    def synthesis(self, ws, noise_mode="const"):
        """ws (N, num_ws, w_dim) -> (N, R, R, img_channels) float32, unclipped."""
        return self.synthesis_net(ws, noise_mode)


def init_variables(module, rng):
    """Random variables for `module` (official init: randn weights, zero biases and strengths)."""
    z = jnp.zeros((1, module.z_dim), jnp.float32)
    c = jnp.zeros((1, module.c_dim), jnp.float32) if module.c_dim > 0 else None
    return module.init({"params": rng}, z, c, noise_mode="const")


def random_variables(module, seed):
    """The distributions of `init_variables`, drawn with numpy from an explicit integer seed.

    Same tree and distributions, much cheaper: XLA on CPU compiles one threefry kernel per
    parameter in `module.init` (tens of seconds for a full-size G), numpy needs no compile.
    """
    shapes = jax.eval_shape(lambda key: init_variables(module, key), jax.random.key(seed))
    rng = np.random.default_rng(seed)

    def draw(path, spec):
        names = [p.key for p in path]
        leaf = names[-1]
        if leaf in ("weight", "const", "noise_const"):
            value = rng.standard_normal(spec.shape)
            if names[2].startswith("fc"):  # mapping layers store weights / lr_multiplier
                value = value / module.mapping_lr_multiplier
        elif leaf == "bias" and names[-2] == "affine":
            value = np.ones(spec.shape)  # styles start at 1 (official bias_init=1)
        else:  # other biases, noise strengths, w_avg
            value = np.zeros(spec.shape)
        return jnp.asarray(value, spec.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)
