"""EDM denoisers (Karras et al. 2022) in Flax (the sampler is `mgr_jax.generators.edm`).

`EDMPrecond` wraps the DDPM++ / NCSN++ `SongUNet` with the EDM preconditioning:
    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma), labels)
with c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4 (sd = sigma_data).

Images are NHWC here (the official code is NCHW); parameters use Flax layouts (Dense kernels
(in, out), convolution kernels HWIO). Submodule names follow the official module tree with the
dots replaced by underscores ("model.enc.16x16_block0.conv0" -> model/enc_16x16_block0/conv0),
so that `converters.edm` maps a snapshot onto them one tensor at a time. FourierEmbedding's fixed
random frequencies live in the "buffers" collection, not in "params": they are not trainable.
"""
import math
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Full float32 matmuls and convolutions: on a GPU the default may use TF32, whose round-off
# exceeds the fixture tolerances after 2 * steps - 1 network evaluations.
_PRECISION = jax.lax.Precision.HIGHEST

# Hyper-parameters of EDMPrecond(model_type="SongUNet", ...) with the official defaults; the
# keyword names are the official constructor's, so recorded init kwargs map onto them directly.
SONGUNET_DEFAULTS = dict(
    img_resolution=32, img_channels=3, label_dim=0, use_fp16=False, sigma_min=0.0,
    sigma_max=float("inf"), sigma_data=0.5, model_type="SongUNet", augment_dim=0,
    model_channels=128, channel_mult=(1, 2, 2, 2), channel_mult_emb=4, num_blocks=4,
    attn_resolutions=(16,), dropout=0.10, label_dropout=0.0, embedding_type="positional",
    channel_mult_noise=1, encoder_type="standard", decoder_type="standard",
    resample_filter=(1, 1))


# ----------------------------------------------------------------------------------------------
# Initialisers. Only used for freshly built networks (tests, training from scratch): converted
# snapshots overwrite every parameter. They follow the official "xavier_uniform" scheme, with the
# official extra factor (1e-5 on the zero-initialised layers, sqrt(0.2) on attention qkv).

def _xavier_uniform(scale, receptive_axes):
    """Xavier-uniform for a kernel whose last two axes are (in, out), times `scale`."""
    def init(key, shape, dtype=jnp.float32):
        receptive = int(np.prod([shape[a] for a in receptive_axes])) if receptive_axes else 1
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
        bound = scale * math.sqrt(6.0 / (fan_in + fan_out))
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def resample_buffer(resample_filter):
    """(k, k) float32 filter normalised to sum 1: what the official layers store as a buffer."""
    f = np.asarray(resample_filter, dtype=np.float32)
    return np.outer(f, f) / np.float32(f.sum() ** 2)


def _conv(x, kernel, padding):
    """Stride-1 cross-correlation of NHWC x with an HWIO kernel (PyTorch conv2d semantics)."""
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding=[(padding, padding)] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_PRECISION)


def _taps(resample_filter):
    """1-D filter normalised to sum 1: its outer square is the official 2-D buffer."""
    f = np.asarray(resample_filter, dtype=np.float64)
    return f / f.sum()


# The filters are separable and the same for every channel, so resampling is done one axis at a
# time as a sum of a few shifted slices. XLA's CPU grouped convolution with lhs_dilation (the
# direct way to write a depthwise transposed convolution) is over 20x slower than this.

def _down_1d(x, taps, padding, axis):
    """Filter along `axis` and keep every second sample (PyTorch conv2d stride 2, 1-D)."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (padding, padding)
    x = jnp.pad(x, pad)
    n_out = (x.shape[axis] - len(taps)) // 2 + 1
    return sum(np.float32(g) * jax.lax.slice_in_dim(x, t, t + 2 * (n_out - 1) + 1, 2, axis)
               for t, g in enumerate(taps))


def _up_1d(x, taps, padding, axis):
    """Transposed filter with stride 2 along `axis` (PyTorch conv_transpose2d stride 2, 1-D)."""
    n, k = x.shape[axis], len(taps)
    # Zero insertion: x0 0 x1 0 ... x_{n-1}, length 2n - 1.
    z = jnp.stack([x, jnp.zeros_like(x)], axis=axis + 1)
    z = z.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 1:])
    z = jax.lax.slice_in_dim(z, 0, 2 * n - 1, axis=axis)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (k - 1 - padding, k - 1 - padding)
    z = jnp.pad(z, pad)
    n_out = 2 * n - 2 + k - 2 * padding
    # Full correlation with the flipped taps; the transposed conv's gain of 2 per axis.
    return sum(np.float32(2 * g) * jax.lax.slice_in_dim(z, k - 1 - t, k - 1 - t + n_out,
                                                        axis=axis)
               for t, g in enumerate(taps))


def _downsample(x, resample_filter, padding):
    """Depthwise FIR filter then stride 2: x (N, H, W, C) -> (N, H', W', C)."""
    taps = _taps(resample_filter)
    return _down_1d(_down_1d(x, taps, padding, 1), taps, padding, 2)


def _upsample(x, resample_filter, padding):
    """PyTorch conv_transpose2d(x, 4 * filter, stride=2, padding) per channel: NHWC -> ~2x."""
    taps = _taps(resample_filter)
    return _up_1d(_up_1d(x, taps, padding, 1), taps, padding, 2)


# ----------------------------------------------------------------------------------------------
# Layers.

class Linear(nn.Module):
    """Fully connected layer: x (..., in) -> (..., features)."""
    features: int
    use_bias: bool = True
    init_weight: float = 1.0

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", _xavier_uniform(self.init_weight, ()),
                            (x.shape[-1], self.features))
        y = jnp.matmul(x, kernel, precision=_PRECISION)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return y


class Conv2d(nn.Module):
    """Convolution with optional 2x up/down-sampling by a FIR filter: NHWC -> NHWC.

    kernel 0 means no weights (a pure resampling layer, no bias either). Unfused order is
    resample then convolve; fused is convolve then downsample, or upsample then convolve with
    the paddings split between the two, as the official layer does.
    """
    out_channels: int
    kernel: int
    use_bias: bool = True
    up: bool = False
    down: bool = False
    resample_filter: Tuple[int, ...] = (1, 1)
    fused_resample: bool = False
    init_weight: float = 1.0

    @nn.compact
    def __call__(self, x):
        w = None
        if self.kernel:
            w = self.param("kernel", _xavier_uniform(self.init_weight, (0, 1)),
                           (self.kernel, self.kernel, x.shape[-1], self.out_channels))
        f = tuple(self.resample_filter)
        w_pad = self.kernel // 2
        f_pad = (len(f) - 1) // 2 if (self.up or self.down) else 0
        if self.fused_resample and self.up and w is not None:
            x = _upsample(x, f, max(f_pad - w_pad, 0))
            x = _conv(x, w, max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = _conv(x, w, w_pad + f_pad)
            x = _downsample(x, f, 0)
        else:
            if self.up:
                x = _upsample(x, f, f_pad)
            if self.down:
                x = _downsample(x, f, f_pad)
            if w is not None:
                x = _conv(x, w, w_pad)
        if self.kernel and self.use_bias:
            x = x + self.param("bias", nn.initializers.zeros, (self.out_channels,), jnp.float32)
        return x


class GroupNorm(nn.Module):
    """Group normalisation with min(num_groups, C // min_channels_per_group) groups: NHWC."""
    eps: float = 1e-5
    num_groups: int = 32
    min_channels_per_group: int = 4

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        g = min(self.num_groups, c // self.min_channels_per_group)
        n, h, w = x.shape[:3]
        xg = x.reshape(n, h, w, g, c // g)
        mean = jnp.mean(xg, axis=(1, 2, 4), keepdims=True)
        var = jnp.mean(jnp.square(xg - mean), axis=(1, 2, 4), keepdims=True)
        xg = (xg - mean) * jax.lax.rsqrt(var + self.eps)
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        return xg.reshape(n, h, w, c) * scale + bias


class PositionalEmbedding(nn.Module):
    """Transformer sinusoidal embedding of the noise level: (N,) -> (N, num_channels) [cos, sin]."""
    num_channels: int
    max_positions: int = 10000
    endpoint: bool = False

    def __call__(self, x):
        half = self.num_channels // 2
        freqs = np.arange(half, dtype=np.float32) / np.float32(half - (1 if self.endpoint else 0))
        freqs = (np.float32(1.0 / self.max_positions) ** freqs).astype(np.float32)
        x = x[:, None] * jnp.asarray(freqs, x.dtype)[None, :]
        return jnp.concatenate([jnp.cos(x), jnp.sin(x)], axis=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of the noise level: (N,) -> (N, num_channels) [cos, sin]."""
    num_channels: int
    scale: float = 16.0

    @nn.compact
    def __call__(self, x):
        freqs = self.variable(
            "buffers", "freqs",
            lambda: self.scale * jax.random.normal(self.make_rng("params"),
                                                   (self.num_channels // 2,), jnp.float32)).value
        x = x[:, None] * (2 * np.pi * freqs).astype(x.dtype)[None, :]
        return jnp.concatenate([jnp.cos(x), jnp.sin(x)], axis=1)


class UNetBlock(nn.Module):
    """Residual block with optional resampling and self-attention: (N,H,W,Cin), emb -> NHWC."""
    out_channels: int
    up: bool = False
    down: bool = False
    attention: bool = False
    num_heads: Optional[int] = None
    channels_per_head: int = 64
    dropout: float = 0.0
    skip_scale: float = 1.0
    eps: float = 1e-5
    resample_filter: Tuple[int, ...] = (1, 1)
    resample_proj: bool = False
    adaptive_scale: bool = True

    @nn.compact
    def __call__(self, x, emb, train=False):
        in_channels, out = x.shape[-1], self.out_channels
        heads = 0
        if self.attention:
            heads = self.num_heads if self.num_heads is not None else out // self.channels_per_head
        orig = x
        x = Conv2d(out, 3, up=self.up, down=self.down, resample_filter=self.resample_filter,
                   name="conv0")(nn.silu(GroupNorm(eps=self.eps, name="norm0")(x)))
        params = Linear(out * (2 if self.adaptive_scale else 1), name="affine")(emb)
        params = params[:, None, None, :].astype(x.dtype)
        norm1 = GroupNorm(eps=self.eps, name="norm1")
        if self.adaptive_scale:
            scale, shift = jnp.split(params, 2, axis=-1)
            x = nn.silu(shift + norm1(x) * (scale + 1))
        else:
            x = nn.silu(norm1(x + params))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Conv2d(out, 3, init_weight=1e-5, name="conv1")(x)
        if out != in_channels or self.up or self.down:
            kernel = 1 if (self.resample_proj or out != in_channels) else 0
            orig = Conv2d(out, kernel, up=self.up, down=self.down,
                          resample_filter=self.resample_filter, name="skip")(orig)
        x = (x + orig) * self.skip_scale
        if heads:
            n, h, w, c = x.shape
            ch = c // heads
            qkv = Conv2d(c * 3, 1, init_weight=math.sqrt(0.2), name="qkv")(
                GroupNorm(eps=self.eps, name="norm2")(x))
            # The official layout of the 3C qkv channels is (head, channel, q/k/v).
            qkv = qkv.reshape(n, h * w, heads, ch, 3)
            q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]
            logits = jnp.einsum("nqhc,nkhc->nhqk", q, k / np.float32(np.sqrt(ch)),
                                precision=_PRECISION)
            weights = jax.nn.softmax(logits, axis=-1)
            a = jnp.einsum("nhqk,nkhc->nqhc", weights, v, precision=_PRECISION)
            a = a.reshape(n, h, w, c)
            x = (Conv2d(c, 1, init_weight=1e-5, name="proj")(a) + x) * self.skip_scale
        return x


# ----------------------------------------------------------------------------------------------
# SongUNet: the DDPM++ (positional, standard, [1, 1]) and NCSN++ (fourier, residual encoder,
# skip decoder, [1, 3, 3, 1]) backbones of the EDM paper.

def songunet_layout(img_resolution, in_channels, out_channels, model_channels, channel_mult,
                    num_blocks, attn_resolutions, encoder_type, decoder_type):
    """(encoder, decoder): ordered [(key, spec)] lists, as the official module dicts.

    spec is a dict: {"type": "conv"|"block"|"norm", ...constructor settings...}; the order is
    the order of evaluation, which the aux (skip/residual) branches depend on.
    """
    if encoder_type not in ("standard", "skip", "residual"):
        raise ValueError(f"encoder_type must be standard, skip or residual, not {encoder_type!r}")
    if decoder_type not in ("standard", "skip"):
        raise ValueError(f"decoder_type must be standard or skip, not {decoder_type!r}")
    enc, dec = [], []
    cout = caux = in_channels
    for level, mult in enumerate(channel_mult):
        res = img_resolution >> level
        if level == 0:
            cout = model_channels
            enc.append((f"{res}x{res}_conv", dict(type="conv", out_channels=cout, kernel=3)))
        else:
            enc.append((f"{res}x{res}_down", dict(type="block", out_channels=cout, down=True)))
            if encoder_type == "skip":
                enc.append((f"{res}x{res}_aux_down",
                            dict(type="conv", out_channels=caux, kernel=0, down=True)))
                enc.append((f"{res}x{res}_aux_skip",
                            dict(type="conv", out_channels=cout, kernel=1)))
            if encoder_type == "residual":
                enc.append((f"{res}x{res}_aux_residual",
                            dict(type="conv", out_channels=cout, kernel=3, down=True,
                                 fused_resample=True)))
                caux = cout
        for idx in range(num_blocks):
            cout = model_channels * mult
            enc.append((f"{res}x{res}_block{idx}",
                        dict(type="block", out_channels=cout,
                             attention=res in attn_resolutions)))
    skips = [spec["out_channels"] for key, spec in enc if "aux" not in key]
    for level, mult in reversed(list(enumerate(channel_mult))):
        res = img_resolution >> level
        if level == len(channel_mult) - 1:
            dec.append((f"{res}x{res}_in0", dict(type="block", out_channels=cout, attention=True)))
            dec.append((f"{res}x{res}_in1", dict(type="block", out_channels=cout)))
        else:
            dec.append((f"{res}x{res}_up", dict(type="block", out_channels=cout, up=True)))
        for idx in range(num_blocks + 1):
            skips.pop()  # one skip connection is concatenated to each of these blocks
            cout = model_channels * mult
            dec.append((f"{res}x{res}_block{idx}",
                        dict(type="block", out_channels=cout, concat=True,
                             attention=idx == num_blocks and res in attn_resolutions)))
        if decoder_type == "skip" or level == 0:
            if decoder_type == "skip" and level < len(channel_mult) - 1:
                dec.append((f"{res}x{res}_aux_up",
                            dict(type="conv", out_channels=out_channels, kernel=0, up=True)))
            dec.append((f"{res}x{res}_aux_norm", dict(type="norm", eps=1e-6)))
            dec.append((f"{res}x{res}_aux_conv",
                        dict(type="conv", out_channels=out_channels, kernel=3, init_weight=1e-5)))
    return enc, dec


class SongUNet(nn.Module):
    """DDPM++ / NCSN++ U-Net: x (N,H,W,C), noise_labels (N,), class_labels (N,L)|None -> NHWC."""
    img_resolution: int
    in_channels: int
    out_channels: int
    label_dim: int = 0
    augment_dim: int = 0
    model_channels: int = 128
    channel_mult: Tuple[int, ...] = (1, 2, 2, 2)
    channel_mult_emb: int = 4
    num_blocks: int = 4
    attn_resolutions: Tuple[int, ...] = (16,)
    dropout: float = 0.10
    label_dropout: float = 0.0
    embedding_type: str = "positional"
    channel_mult_noise: int = 1
    encoder_type: str = "standard"
    decoder_type: str = "standard"
    resample_filter: Tuple[int, ...] = (1, 1)

    @nn.compact
    def __call__(self, x, noise_labels, class_labels=None, augment_labels=None, train=False):
        emb_channels = self.model_channels * self.channel_mult_emb
        noise_channels = self.model_channels * self.channel_mult_noise
        if self.embedding_type == "positional":
            emb = PositionalEmbedding(noise_channels, endpoint=True, name="map_noise")(
                noise_labels)
        elif self.embedding_type == "fourier":
            emb = FourierEmbedding(noise_channels, name="map_noise")(noise_labels)
        else:
            raise ValueError(f"embedding_type must be positional or fourier, "
                             f"not {self.embedding_type!r}")
        # The official network swaps the halves to [sin, cos] after embedding.
        half = emb.shape[1] // 2
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=1)
        if self.label_dim:
            if class_labels is None:
                raise ValueError(f"this network is conditional (label_dim {self.label_dim}): "
                                 "pass one-hot class_labels")
            if train and self.label_dropout:
                keep = jax.random.uniform(self.make_rng("dropout"), (class_labels.shape[0], 1))
                class_labels = class_labels * (keep >= self.label_dropout).astype(x.dtype)
            emb = emb + Linear(noise_channels, name="map_label")(
                class_labels * np.float32(np.sqrt(self.label_dim)))
        if self.augment_dim and augment_labels is not None:
            emb = emb + Linear(noise_channels, use_bias=False, name="map_augment")(
                augment_labels)
        elif self.augment_dim and self.is_initializing():
            Linear(noise_channels, use_bias=False, name="map_augment")(
                jnp.zeros((1, self.augment_dim), x.dtype))
        emb = nn.silu(Linear(emb_channels, name="map_layer0")(emb))
        emb = nn.silu(Linear(emb_channels, name="map_layer1")(emb))

        block_kwargs = dict(num_heads=1, dropout=self.dropout, skip_scale=float(np.sqrt(0.5)),
                            eps=1e-6, resample_filter=tuple(self.resample_filter),
                            resample_proj=True, adaptive_scale=False)
        enc, dec = songunet_layout(self.img_resolution, self.in_channels, self.out_channels,
                                   self.model_channels, self.channel_mult, self.num_blocks,
                                   self.attn_resolutions, self.encoder_type, self.decoder_type)

        def make(prefix, key, spec):
            kind = spec["type"]
            spec = {k: v for k, v in spec.items() if k not in ("type", "concat")}
            name = f"{prefix}_{key}"
            if kind == "block":
                return UNetBlock(**spec, **block_kwargs, name=name)
            if kind == "norm":
                return GroupNorm(name=name, **spec)
            return Conv2d(**spec, resample_filter=tuple(self.resample_filter), name=name)

        skips = []
        aux = x
        for key, spec in enc:
            layer = make("enc", key, spec)
            if "aux_down" in key:
                aux = layer(aux)
            elif "aux_skip" in key:
                x = skips[-1] = x + layer(aux)
            elif "aux_residual" in key:
                x = skips[-1] = aux = (x + layer(aux)) / np.float32(np.sqrt(2))
            else:
                x = layer(x, emb, train) if spec["type"] == "block" else layer(x)
                skips.append(x)

        aux = tmp = None
        for key, spec in dec:
            layer = make("dec", key, spec)
            if "aux_up" in key:
                aux = layer(aux)
            elif "aux_norm" in key:
                tmp = layer(x)
            elif "aux_conv" in key:
                tmp = layer(nn.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if spec.get("concat"):
                    x = jnp.concatenate([x, skips.pop()], axis=-1)
                x = layer(x, emb, train)
        return aux


class EDMPrecond(nn.Module):
    """EDM-preconditioned SongUNet: x (N,H,W,C), sigma (N,)|(), labels (N,L)|None -> D(x) NHWC."""
    img_resolution: int
    img_channels: int
    label_dim: int = 0
    use_fp16: bool = False  # accepted for the official kwargs; always evaluated in float32
    sigma_min: float = 0.0
    sigma_max: float = float("inf")
    sigma_data: float = 0.5
    model_type: str = "SongUNet"
    augment_dim: int = 0
    model_channels: int = 128
    channel_mult: Tuple[int, ...] = (1, 2, 2, 2)
    channel_mult_emb: int = 4
    num_blocks: int = 4
    attn_resolutions: Tuple[int, ...] = (16,)
    dropout: float = 0.10
    label_dropout: float = 0.0
    embedding_type: str = "positional"
    channel_mult_noise: int = 1
    encoder_type: str = "standard"
    decoder_type: str = "standard"
    resample_filter: Tuple[int, ...] = (1, 1)

    @nn.compact
    def __call__(self, x, sigma, class_labels=None, augment_labels=None, train=False):
        if self.model_type != "SongUNet":
            raise NotImplementedError(f"model_type {self.model_type!r}: only SongUNet "
                                      "(DDPM++ / NCSN++) is ported")
        x = jnp.asarray(x, jnp.float32)
        sigma = jnp.asarray(sigma, jnp.float32).reshape(-1, 1, 1, 1)
        if not self.label_dim:
            class_labels = None
        elif class_labels is None:
            # As the official network: no labels means the all-zero label vector.
            class_labels = jnp.zeros((1, self.label_dim), jnp.float32)
        else:
            class_labels = jnp.asarray(class_labels, jnp.float32).reshape(-1, self.label_dim)
        if class_labels is not None and class_labels.shape[0] != x.shape[0]:
            class_labels = jnp.broadcast_to(class_labels, (x.shape[0], self.label_dim))
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / jnp.sqrt(sigma ** 2 + sd ** 2)
        c_in = 1 / jnp.sqrt(sd ** 2 + sigma ** 2)
        c_noise = jnp.log(sigma) / 4
        c_noise = jnp.broadcast_to(c_noise.reshape(-1), (x.shape[0],))
        model = SongUNet(
            img_resolution=self.img_resolution, in_channels=self.img_channels,
            out_channels=self.img_channels, label_dim=self.label_dim,
            augment_dim=self.augment_dim, model_channels=self.model_channels,
            channel_mult=tuple(self.channel_mult), channel_mult_emb=self.channel_mult_emb,
            num_blocks=self.num_blocks, attn_resolutions=tuple(self.attn_resolutions),
            dropout=self.dropout, label_dropout=self.label_dropout,
            embedding_type=self.embedding_type, channel_mult_noise=self.channel_mult_noise,
            encoder_type=self.encoder_type, decoder_type=self.decoder_type,
            resample_filter=tuple(self.resample_filter), name="model")
        f_x = model(c_in * x, c_noise, class_labels, augment_labels, train)
        return c_skip * x + c_out * f_x.astype(jnp.float32)


def build(**kwargs) -> EDMPrecond:
    """EDMPrecond from the official constructor's keyword names (lists become tuples)."""
    unknown = sorted(set(kwargs) - set(SONGUNET_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown EDMPrecond/SongUNet settings: {', '.join(unknown)}")
    settings = dict(SONGUNET_DEFAULTS, **kwargs)
    for key in ("sigma_min", "sigma_max", "sigma_data"):
        settings[key] = float(settings[key])  # module_kwargs writes infinity as "inf"
    for key in ("channel_mult", "attn_resolutions", "resample_filter"):
        settings[key] = tuple(int(v) for v in settings[key])
    return EDMPrecond(**settings)


def module_kwargs(module: EDMPrecond) -> dict:
    """JSON-ready constructor settings of `module` (inverse of `build`)."""
    out = {}
    for key in SONGUNET_DEFAULTS:
        value = getattr(module, key)
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)  # strict JSON has no infinity
        out[key] = list(value) if isinstance(value, tuple) else value
    return out
