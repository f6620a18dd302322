"""StyleGAN-XL generator (Sauer et al., 2022) in Flax: StyleGAN3 alias-free synthesis.

Covers `training/networks_stylegan3_resetting.py` of the official code: the `Generator`
(stem, stylegan3-t and -r) and the `SuperresGenerator`, which is the same network with the
stem's critically sampled layers replaced by head layers. Both are a mapping network and a
synthesis network of `SynthesisInput` followed by `SynthesisLayer`s in `layer_names` order, so
one module describes both; each layer's hyper-parameters (channels, up/down factors, padding,
clamp, filter lengths) are fields of its `LayerSpec`, read from the snapshot by the converter.

Variable names follow the official `state_dict` keys: `mapping.fc0.weight` is
`params/mapping/fc0/weight`, buffers (`w_avg`, `magnitude_ema`, `up_filter`, `down_filter`,
`transform`, `freqs`, `phases`) live in the `buffers` collection. Layouts are Flax's: dense
weights (in, out), conv weights (k, k, in, out), images NHWC. Weights are stored raw and scaled
at run time (equalized learning rate), as the original. There is no noise input: `noise_mode`
is accepted and has no effect. Images come out float32 in G's output scale, unclipped.
"""
import functools
import math
from typing import Any, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mgr_jax.models import stylegan_xl_ops as ops


class LayerSpec(NamedTuple):
    """What one `SynthesisLayer` does, as the official layer's attributes say.

    `up_taps` / `down_taps` are the filter lengths (1: no filter); a radial down filter is
    (down_taps, down_taps). `padding` is (x0, x1, y0, y1) with respect to the upsampled image.
    """
    name: str
    in_channels: int
    out_channels: int
    is_torgb: bool
    conv_kernel: int
    up_factor: int
    down_factor: int
    padding: Tuple[int, int, int, int]
    up_taps: int
    down_taps: int
    down_radial: bool = False
    conv_clamp: Optional[float] = 256.0


class InputSpec(NamedTuple):
    """`SynthesisInput`: Fourier features of `channels` frequencies on a size=(W, H) grid."""
    channels: int
    size: Tuple[int, int]
    sampling_rate: float
    bandwidth: float


def _normal(scale=1.0):
    return lambda key, shape: scale * jax.random.normal(key, shape, jnp.float32)


def _box_filter(shape):
    """Placeholder filter for `init` (a normalised box); converted models hold the real one."""
    return jnp.full(shape, 1.0 / np.prod(shape), jnp.float32)


class FullyConnectedLayer(nn.Module):
    """y = act(x @ (W * lr / sqrt(in)) + b * lr); (N, in) -> (N, out). act: linear or lrelu."""
    features: int
    activation: str = "linear"
    lr_multiplier: float = 1.0
    bias_init: Any = 0.0

    @nn.compact
    def __call__(self, x):
        in_features = x.shape[-1]
        lr = self.lr_multiplier
        weight = self.param("weight", _normal(1.0 / lr), (in_features, self.features))
        bias = self.param("bias", lambda k, s: jnp.broadcast_to(
            jnp.asarray(self.bias_init, jnp.float32), s) / lr, (self.features,))
        x = jnp.matmul(x.astype(jnp.float32), weight * (lr / math.sqrt(in_features)),
                       precision=ops.HIGHEST)
        x = x + bias * lr
        if self.activation == "lrelu":
            return ops.leaky_relu(x, 0.2) * math.sqrt(2.0)
        if self.activation != "linear":
            raise ValueError(f"unsupported activation {self.activation!r}")
        return x


class Embedding(nn.Module):
    """torch.nn.Embedding: rows of `weight` (num_embeddings, embedding_dim) by index."""
    num_embeddings: int
    embedding_dim: int

    @nn.compact
    def __call__(self, idx):
        weight = self.param("weight", _normal(), (self.num_embeddings, self.embedding_dim))
        return jnp.take(weight, idx, axis=0)


class MappingNetwork(nn.Module):
    """z (N, z_dim), one-hot c (N, c_dim) -> ws (N, num_ws, w_dim), truncated per class.

    c enters as embed_proj(embed(argmax c)), normalised and concatenated to the normalised z.
    Truncation moves the first `truncation_cutoff` ws (all when None) towards w_avg[class]
    (w_avg when c_dim is 0): w_avg + psi * (w - w_avg).
    """
    z_dim: int
    c_dim: int
    w_dim: int
    num_ws: int
    num_layers: int = 2
    lr_multiplier: float = 0.01
    num_embeddings: int = 1000
    embedding_dim: int = 320

    @nn.compact
    def __call__(self, z, c, truncation_psi=1.0, truncation_cutoff=None):
        x = ops.normalize_2nd_moment(z.astype(jnp.float32))
        label = None
        if self.c_dim > 0:
            label = jnp.argmax(c, axis=1)
            y = Embedding(self.num_embeddings, self.embedding_dim, name="embed")(label)
            y = FullyConnectedLayer(self.z_dim, "lrelu", name="embed_proj")(y)
            x = jnp.concatenate([x, ops.normalize_2nd_moment(y)], axis=1)
        for idx in range(self.num_layers):
            x = FullyConnectedLayer(self.w_dim, "lrelu", self.lr_multiplier,
                                    name=f"fc{idx}")(x)
        avg_shape = (self.c_dim, self.w_dim) if self.c_dim > 0 else (self.w_dim,)
        w_avg = self.variable("buffers", "w_avg", jnp.zeros, avg_shape, jnp.float32).value
        ws = jnp.broadcast_to(x[:, None, :], (x.shape[0], self.num_ws, self.w_dim))
        if isinstance(truncation_psi, (int, float)) and truncation_psi == 1:
            return ws
        centre = (w_avg[label] if self.c_dim > 0 else w_avg[None])[:, None, :]
        truncated = centre + truncation_psi * (ws - centre)
        keep = np.zeros(self.num_ws, bool)
        keep[:truncation_cutoff] = True  # python slicing, as the official ws[i, :cutoff]
        return jnp.where(keep[None, :, None], truncated, ws)


def _sampling_grid(size, sampling_rate):
    """affine_grid(align_corners=False) of the input: (H, W, 2) (x, y) sample positions."""
    width, height = size
    gx = (2 * np.arange(width) + 1) / width - 1
    gy = (2 * np.arange(height) + 1) / height - 1
    gx = gx * (0.5 * width / sampling_rate)
    gy = gy * (0.5 * height / sampling_rate)
    grid = np.stack(np.meshgrid(gx, gy, indexing="xy"), axis=-1)
    return jnp.asarray(grid, jnp.float32)


class SynthesisInput(nn.Module):
    """w (N, w_dim) -> (N, H, W, channels) Fourier features, rotated and shifted by affine(w).

    The frequencies and phases are buffers, moved by the learned rotation / translation and by
    the stored `transform` (the user's inverse transform); frequencies past the band are damped.
    """
    spec: InputSpec

    @nn.compact
    def __call__(self, w):
        spec = self.spec
        ch = spec.channels
        weight = self.param("weight", _normal(), (ch, ch))  # (in, out): torch weight.T
        transform = self.variable("buffers", "transform", lambda: jnp.eye(3)).value
        freqs = self.variable("buffers", "freqs", jnp.zeros, (ch, 2), jnp.float32).value
        phases = self.variable("buffers", "phases", jnp.zeros, (ch,), jnp.float32).value

        t = FullyConnectedLayer(4, bias_init=(1.0, 0.0, 0.0, 0.0), name="affine")(w)
        t = t / jnp.linalg.norm(t[:, :2], axis=1, keepdims=True)
        transforms = jnp.matmul(self._rotate_translate(t), transform, precision=ops.HIGHEST)
        phases = phases[None] + jnp.einsum("cj,nj->nc", freqs, transforms[:, :2, 2],
                                           precision=ops.HIGHEST)
        freqs = jnp.einsum("cj,njk->nck", freqs, transforms[:, :2, :2], precision=ops.HIGHEST)
        amplitudes = jnp.clip(1 - (jnp.linalg.norm(freqs, axis=2) - spec.bandwidth)
                              / (spec.sampling_rate / 2 - spec.bandwidth), 0, 1)
        grid = _sampling_grid(spec.size, spec.sampling_rate)
        # No dot touches the (H, W) grid here: the GPU compiler keeps these tensors
        # channel-first, and its Triton GEMM finds no tiling for a dot over the transposed grid
        # (36x36 at the fixture's shape, H100, forward-over-reverse). So the sum over the two
        # coordinates is written out and the channel mix is a 1x1 convolution (cuDNN).
        x = (grid[None, :, :, None, 0] * freqs[:, None, None, :, 0]
             + grid[None, :, :, None, 1] * freqs[:, None, None, :, 1])
        x = jnp.sin((x + phases[:, None, None, :]) * (2 * np.pi))
        x = x * amplitudes[:, None, None, :]
        kernel = (weight / np.sqrt(ch))[None, None]
        return lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=ops.HIGHEST)

    @staticmethod
    def _rotate_translate(t):
        """(N, 4) (cos, sin, tx, ty) -> (N, 3, 3) rotation @ translation (inverse, wrt image)."""
        one, zero = jnp.ones_like(t[:, 0]), jnp.zeros_like(t[:, 0])
        rot = jnp.stack([jnp.stack([t[:, 0], -t[:, 1], zero], -1),
                         jnp.stack([t[:, 1], t[:, 0], zero], -1),
                         jnp.stack([zero, zero, one], -1)], axis=1)
        shift = jnp.stack([jnp.stack([one, zero, -t[:, 2]], -1),
                           jnp.stack([zero, one, -t[:, 3]], -1),
                           jnp.stack([zero, zero, one], -1)], axis=1)
        return jnp.matmul(rot, shift, precision=ops.HIGHEST)


class SynthesisLayer(nn.Module):
    """x (N, H, W, in), w (N, w_dim) -> (N, H', W', out): modulated conv + filtered lrelu.

    The input is scaled by rsqrt(magnitude_ema); ToRGB scales the styles by 1/sqrt(in k^2),
    skips demodulation and the nonlinearity (gain 1, slope 1) but keeps bias and clamp.
    """
    spec: LayerSpec
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, w):
        spec = self.spec
        k = spec.conv_kernel
        weight = self.param("weight", _normal(), (k, k, spec.in_channels, spec.out_channels))
        bias = self.param("bias", nn.initializers.zeros, (spec.out_channels,))
        magnitude_ema = self.variable("buffers", "magnitude_ema", jnp.ones, (), jnp.float32)
        up_filter = self._filter("up_filter", spec.up_taps)
        down_shape = (spec.down_taps,) * (2 if spec.down_radial else 1)
        down_filter = self._filter("down_filter", spec.down_taps, down_shape)

        styles = FullyConnectedLayer(spec.in_channels, bias_init=1.0, name="affine")(w)
        if spec.is_torgb:
            styles = styles * (1 / np.sqrt(spec.in_channels * k * k))  # weight_gain
        x = ops.modulated_conv2d(x.astype(self.dtype), weight, styles,
                                 demodulate=not spec.is_torgb, padding=k - 1,
                                 input_gain=lax.rsqrt(magnitude_ema.value))
        return ops.filtered_lrelu(
            x, up_filter, down_filter, bias, spec.up_factor, spec.down_factor, spec.padding,
            gain=1.0 if spec.is_torgb else math.sqrt(2.0),
            slope=1.0 if spec.is_torgb else 0.2, clamp=spec.conv_clamp)

    def _filter(self, name, taps, shape=None):
        """The stored FIR filter (float32 buffer), or None for the identity (1 tap)."""
        if taps <= 1:
            return None
        shape = shape or (taps,)
        return self.variable("buffers", name, _box_filter, shape).value


class SynthesisNetwork(nn.Module):
    """ws (N, num_ws, w_dim) -> (N, R, R, C): input from ws[:, 0], layer i from ws[:, i+1]."""
    input_spec: InputSpec
    layers: Tuple[LayerSpec, ...]
    output_scale: float = 0.25
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ws):
        ws = ws.astype(jnp.float32)
        x = SynthesisInput(self.input_spec, name="input")(ws[:, 0])
        for i, spec in enumerate(self.layers):
            x = SynthesisLayer(spec, dtype=self.dtype, name=spec.name)(x, ws[:, i + 1])
        x = x.astype(jnp.float32)
        return x * self.output_scale if self.output_scale != 1 else x


class Generator(nn.Module):
    """StyleGAN-XL G: (z (N, z_dim), one-hot c (N, c_dim) or None) -> NHWC float32 images.

    `apply(v, z, c, truncation_psi=1.0, truncation_cutoff=None, noise_mode="const")` gives
    images; `method="mapping"` gives ws (N, num_ws, w_dim); `method="synthesis"` maps ws to
    images. `dtype` is the synthesis compute dtype (float32 as the fixtures; bfloat16 for speed).
    """
    z_dim: int
    c_dim: int
    w_dim: int
    img_resolution: int
    img_channels: int
    input_spec: InputSpec
    layers: Tuple[LayerSpec, ...]
    mapping_layers: int = 2
    mapping_lr_multiplier: float = 0.01
    num_embeddings: int = 1000
    embedding_dim: int = 320
    output_scale: float = 0.25
    dtype: Any = jnp.float32

    @property
    def num_ws(self):
        """One w for the input and one per synthesis layer."""
        return len(self.layers) + 1

    def setup(self):
        self.mapping_net = MappingNetwork(
            self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.mapping_layers,
            self.mapping_lr_multiplier, self.num_embeddings, self.embedding_dim, name="mapping")
        self.synthesis_net = SynthesisNetwork(self.input_spec, tuple(self.layers),
                                              self.output_scale, self.dtype, name="synthesis")

    def mapping(self, z, c, truncation_psi=1.0, truncation_cutoff=None):
        """ws (N, num_ws, w_dim)."""
        return self.mapping_net(z, c, truncation_psi, truncation_cutoff)

    def synthesis(self, ws, noise_mode="const"):
        """ws (N, num_ws, w_dim) -> images (N, R, R, C); noise_mode has no effect."""
        _check_noise_mode(noise_mode)
        return self.synthesis_net(ws)

    def __call__(self, z, c, truncation_psi=1.0, truncation_cutoff=None, noise_mode="const"):
        _check_noise_mode(noise_mode)
        return self.synthesis(self.mapping(z, c, truncation_psi, truncation_cutoff))


def _check_noise_mode(noise_mode):
    if noise_mode not in ("const", "random", "none"):
        raise ValueError(f"noise_mode must be const, random or none, got {noise_mode!r}")


def init_variables(module, key):
    """Freshly initialised variables ({"params", "buffers"}) of a `Generator`."""
    z = jnp.zeros((1, module.z_dim), jnp.float32)
    c = jnp.zeros((1, module.c_dim), jnp.float32) if module.c_dim > 0 else None
    return module.init(key, z, c)


@functools.lru_cache(maxsize=16)
def variable_shapes(module):
    """ShapeDtypeStructs of `init_variables(module, ...)`, traced once per generator layout."""
    return jax.eval_shape(lambda: init_variables(module, jax.random.key(0)))


def random_variables(module, seed):
    """Random variables of `module` drawn with numpy (no XLA compile), for tests and benchmarks.

    Official initial distributions where they matter for the output scale: randn weights
    (mapping weights / lr_multiplier), zero biases, affine biases 1 (the input's (1, 0, 0, 0)),
    w_avg 0, magnitude_ema 1, identity transform, Fourier frequencies in the band and random
    phases. Filters are normalised Hann windows, not the designed Kaiser low-pass filters.
    """
    shapes = variable_shapes(module)
    rng = np.random.default_rng(seed)
    bandwidth = module.input_spec.bandwidth

    def draw(path, spec):
        names = [p.key for p in path]
        leaf, parent = names[-1], names[-2]
        if leaf == "weight":
            value = rng.standard_normal(spec.shape)
            return value / module.mapping_lr_multiplier if parent.startswith("fc") else value
        if leaf == "bias":
            if parent == "affine" and names[-3] == "input":
                return np.array([1.0, 0.0, 0.0, 0.0])
            return np.full(spec.shape, 1.0 if parent == "affine" else 0.0)
        if leaf in ("up_filter", "down_filter"):
            taps = np.hanning(spec.shape[0] + 2)[1:-1]
            value = np.outer(taps, taps) if len(spec.shape) == 2 else taps
            return value / value.sum()
        if leaf == "freqs":
            freqs = rng.standard_normal(spec.shape)
            radii = np.sqrt(np.sum(freqs ** 2, axis=1, keepdims=True))
            return freqs / (radii * np.exp(radii ** 2) ** 0.25) * bandwidth
        if leaf == "phases":
            return rng.uniform(-0.5, 0.5, spec.shape)
        if leaf == "transform":
            return np.eye(3)
        if leaf == "magnitude_ema":
            return np.ones(spec.shape)
        return np.zeros(spec.shape)  # w_avg

    return jax.tree_util.tree_map_with_path(
        lambda p, s: jnp.asarray(draw(p, s), jnp.float32), shapes)
