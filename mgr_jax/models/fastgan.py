"""FastGAN generator (Liu et al. 2021) with the layer layout of the official FastGAN-pytorch code.

`apply(variables, z, noise=None, noise_mode="random", train=False)` -> (img, img_128), NHWC, as
the official forward: no tanh at im_size 256 / 512 (unbounded outputs), tanh at 1024.
Variable collections:
    params          `kernel` (HWIO), BatchNorm `scale` / `bias`, NoiseInjection `weight` (1,)
    batch_stats     BatchNorm `mean` / `var`
    spectral_norm   `u` (out,) and `v` (kh * kw * in,) of PyTorch's spectral_norm hook, with v in
                    the HWIO flattening order (the converter permutes it)
Noise: each NoiseInjection (paths `feat_8_2`, `feat_8_6`, ... as `noise_paths` lists them) adds
weight * noise with noise (N, H, W, 1) taken from `noise[path]` when given, else drawn from
`make_rng("noise")` (noise_mode "random", pass rngs={"noise": key}) or zero (noise_mode "none").
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

# Channels per feature-map side, as multiples of ngf (the official nfc_multi table).
_NFC_MULTI = {4: 16, 8: 8, 16: 4, 32: 2, 64: 2, 128: 1, 256: 0.5, 512: 0.25, 1024: 0.125}

# Sub-layers of each block type: (torch index, kind). Kinds: conv (SN Conv2d, no bias),
# convT (SN ConvTranspose2d), bn (BatchNorm2d), noise (NoiseInjection). Indices missing here
# (upsample, GLU, pooling, activations) hold no parameters.
BLOCK_LAYERS = {
    "init": (("init.0", "convT"), ("init.1", "bn")),
    "up": (("1", "conv"), ("2", "bn")),
    "up_comp": (("1", "conv"), ("2", "noise"), ("3", "bn"), ("5", "conv"), ("6", "noise"),
                ("7", "bn")),
    "se": (("main.1", "conv"), ("main.3", "conv")),
    "conv": (("", "conv"),),
}
# Parameters of each layer kind in registration order, then buffers.
LAYER_PARAMS = {"conv": ("weight_orig",), "convT": ("weight_orig",), "bn": ("weight", "bias"),
                "noise": ("weight",)}
LAYER_BUFFERS = {"conv": ("weight_u", "weight_v"), "convT": ("weight_u", "weight_v"),
                 "bn": ("running_mean", "running_var", "num_batches_tracked"), "noise": ()}


def nfc(ngf):
    """Channels per side: {4: 16 * ngf, ..., 1024: ngf / 8} (truncated to int, as official)."""
    return {k: int(v * ngf) for k, v in _NFC_MULTI.items()}


def layout(im_size):
    """Top-level blocks in the official registration order: [(name, block type), ...]."""
    blocks = [("init", "init"), ("feat_8", "up_comp"), ("feat_16", "up"),
              ("feat_32", "up_comp"), ("feat_64", "up"), ("feat_128", "up_comp"),
              ("feat_256", "up"), ("se_64", "se"), ("se_128", "se"), ("se_256", "se"),
              ("to_128", "conv"), ("to_big", "conv")]
    if im_size > 256:
        blocks += [("feat_512", "up_comp"), ("se_512", "se")]
    if im_size > 512:
        blocks += [("feat_1024", "up")]
    return blocks


def flax_layer_path(block, block_type, torch_index):
    """Flax module path of a block's layer: ('feat_8', 'up_comp', '5') -> ('feat_8', 'conv_5')."""
    kind = dict(BLOCK_LAYERS[block_type])[torch_index]
    if block_type == "conv":
        return (block,)  # the block is the layer itself
    return (block, f"{kind}_{torch_index.split('.')[-1]}")


def parameter_names(im_size):
    """torch names of netG.parameters() in registration order (the order of `g_ema`)."""
    names = []
    for block, btype in layout(im_size):
        for index, kind in BLOCK_LAYERS[btype]:
            prefix = f"{block}.{index}." if index else f"{block}."
            names += [prefix + p for p in LAYER_PARAMS[kind]]
    return names


def noise_paths(im_size):
    """Keys of the NoiseInjection layers, e.g. ['feat_8_2', 'feat_8_6', ...]."""
    return [f"{block}_{index}" for block, btype in layout(im_size)
            for index, kind in BLOCK_LAYERS[btype] if kind == "noise"]


class SNConv(nn.Module):
    """Conv2d (stride 1, no bias) with PyTorch's spectral_norm hook; also the 1x1-input convT.

    Eval: sigma = u . (W v) with the stored u, v. Train: one power step first (stored back when
    `spectral_norm` is mutable). W = kernel as (out, kh * kw * in).
    """
    features: int
    kernel_size: int
    padding: int = 0
    transpose_1x1: bool = False
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x, train: bool):
        k, cin = self.kernel_size, x.shape[-1]
        kernel = self.param("kernel", nn.initializers.normal(0.02), (k, k, cin, self.features))
        w_mat = kernel.reshape(-1, self.features).T
        u_var = self.variable("spectral_norm", "u", lambda: _unit(
            jax.random.normal(self.make_rng("params"), (self.features,))))
        v_var = self.variable("spectral_norm", "v", lambda: _unit(
            jax.random.normal(self.make_rng("params"), (w_mat.shape[1],))))
        u, v = u_var.value, v_var.value
        if train:
            w_const = jax.lax.stop_gradient(w_mat)
            v = _unit(jnp.dot(w_const.T, u, precision=self.precision))
            u = _unit(jnp.dot(w_const, v, precision=self.precision))
            if self.is_mutable_collection("spectral_norm") and not self.is_initializing():
                u_var.value, v_var.value = u, v
        # u and v are constants for autodiff, as in the hook (computed under no_grad).
        u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
        sigma = jnp.dot(u, jnp.dot(w_mat, v, precision=self.precision), precision=self.precision)
        kernel = kernel / sigma
        if self.transpose_1x1:
            # ConvTranspose2d(k, stride 1, pad 0) on a 1x1 map: out[i, j] = sum_c x[c] K[i, j, c].
            return jnp.einsum("nc,ijco->nijo", x.reshape(x.shape[0], -1), kernel,
                              precision=self.precision)
        p = self.padding
        return jax.lax.conv_general_dilated(
            x, kernel, (1, 1), ((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision)


def _unit(x, eps=1e-12):
    """F.normalize of a vector."""
    return x / jnp.maximum(jnp.linalg.norm(x), eps)


class BatchNorm(nn.Module):
    """nn.BatchNorm2d (eps 1e-5, momentum 0.1) on NHWC, running stats in `batch_stats`."""
    eps: float = 1e-5
    momentum: float = 0.1

    @nn.compact
    def __call__(self, x, train: bool):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        if train:
            mean = jnp.mean(x, axis=(0, 1, 2))
            var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
            if self.is_mutable_collection("batch_stats") and not self.is_initializing():
                n = x.size // c  # PyTorch stores the unbiased variance
                ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * mean
                ra_var.value = ((1 - self.momentum) * ra_var.value
                                + self.momentum * var * (n / max(n - 1, 1)))
        else:
            mean, var = ra_mean.value, ra_var.value
        return (x - mean) / jnp.sqrt(var + self.eps) * scale + bias


class NoiseInjection(nn.Module):
    """feat + weight * noise; noise (N, H, W, 1) given, drawn, or zero (noise_mode 'none')."""

    @nn.compact
    def __call__(self, feat, noise=None, noise_mode="random"):
        weight = self.param("weight", nn.initializers.zeros, (1,))
        if noise is None:
            shape = feat.shape[:3] + (1,)
            if noise_mode == "none":
                return feat
            if noise_mode != "random":
                raise ValueError(f"noise_mode={noise_mode!r}: expected 'random' or 'none'")
            noise = jax.random.normal(self.make_rng("noise"), shape, feat.dtype)
        return feat + weight * jnp.asarray(noise, feat.dtype).reshape(feat.shape[:3] + (1,))


def _glu(x):
    """Channel GLU: first half * sigmoid(second half)."""
    c = x.shape[-1] // 2
    return x[..., :c] * jax.nn.sigmoid(x[..., c:])


def _upsample2(x):
    """nn.Upsample(scale_factor=2), nearest: (N, H, W, C) -> (N, 2H, 2W, C)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class InitLayer(nn.Module):
    """Official InitLayer: z (N, nz) -> GLU(BN(SN ConvTranspose 4x4 on a 1x1 map)), (N, 4, 4, C)."""
    channels: int
    precision: Any = "highest"

    @nn.compact
    def __call__(self, z, train: bool):
        x = SNConv(self.channels * 2, 4, transpose_1x1=True, precision=self.precision,
                   name="convT_0")(z, train)
        return _glu(BatchNorm(name="bn_1")(x, train))


class UpBlock(nn.Module):
    """Official UpBlock (comp False) / UpBlockComp (comp True): (N, H, W, in) -> (N, 2H, 2W, out).

    Layers are named after their index in the official nn.Sequential (conv_1, noise_2, bn_3, ...).
    `noise` maps the torch index of a NoiseInjection ('2', '6') to its noise or None.
    """
    out_channels: int
    comp: bool
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x, noise, noise_mode, train: bool):
        x = _upsample2(x)
        stages = ((1, 2, 3), (5, 6, 7)) if self.comp else ((1, None, 2),)
        for conv_i, noise_i, bn_i in stages:
            x = SNConv(self.out_channels * 2, 3, 1, precision=self.precision,
                       name=f"conv_{conv_i}")(x, train)
            if noise_i is not None:
                x = NoiseInjection(name=f"noise_{noise_i}")(x, noise.get(str(noise_i)),
                                                            noise_mode)
            x = _glu(BatchNorm(name=f"bn_{bn_i}")(x, train))
        return x


class SEBlock(nn.Module):
    """Official SEBlock: big * sigmoid(conv1x1(swish(conv4x4(adaptive_avgpool_4(small)))))."""
    precision: Any = "highest"

    @nn.compact
    def __call__(self, small, big, train: bool):
        f = small.shape[1] // 4  # AdaptiveAvgPool2d(4) on a side that 4 divides
        s = nn.avg_pool(small, (f, f), (f, f)) if f > 1 else small
        s = SNConv(big.shape[-1], 4, precision=self.precision, name="conv_1")(s, train)
        s = SNConv(big.shape[-1], 1, precision=self.precision, name="conv_3")(nn.swish(s), train)
        return big * jax.nn.sigmoid(s)


class FastGAN(nn.Module):
    """Official FastGAN Generator(ngf, nz, nc, im_size): z (N, nz) -> (img, img_128) NHWC.

    img is (N, im_size, im_size, nc), img_128 (N, 128, 128, nc); unbounded unless im_size 1024.
    precision: of every matmul / conv ("highest" keeps float32 on GPUs; None: JAX's default).
    """
    ngf: int = 64
    nz: int = 100
    nc: int = 3
    im_size: int = 1024
    precision: Optional[str] = "highest"

    @nn.compact
    def __call__(self, z, noise=None, noise_mode="random", train: bool = False):
        if self.im_size not in (256, 512, 1024):
            raise ValueError(f"im_size={self.im_size}: the official Generator supports "
                             "256, 512 and 1024")
        ch, prec = nfc(self.ngf), self.precision
        noise = dict(noise or {})
        unknown = set(noise) - set(noise_paths(self.im_size))
        if unknown:
            raise ValueError(f"unknown noise keys {sorted(unknown)}; expected a subset of "
                             f"{noise_paths(self.im_size)}")

        def up(name, x, comp):
            """Run block `name`, handing it the noises addressed to its layers."""
            own = {k[len(name) + 1:]: v for k, v in noise.items() if k.startswith(name + "_")}
            side = int(name.split("_")[1])
            return UpBlock(ch[side], comp, prec, name=name)(x, own, noise_mode, train)

        se = lambda name, small, big: SEBlock(prec, name=name)(small, big, train)  # noqa: E731
        feat_4 = InitLayer(ch[4], prec, name="init")(jnp.asarray(z, jnp.float32), train)
        feat_8 = up("feat_8", feat_4, True)
        feat_16 = up("feat_16", feat_8, False)
        feat_32 = up("feat_32", feat_16, True)
        feat_64 = se("se_64", feat_4, up("feat_64", feat_32, False))
        feat_128 = se("se_128", feat_8, up("feat_128", feat_64, True))
        feat_256 = se("se_256", feat_16, up("feat_256", feat_128, False))
        to_128 = SNConv(self.nc, 1, precision=prec, name="to_128")
        to_big = SNConv(self.nc, 3, 1, precision=prec, name="to_big")
        if self.im_size == 256:
            return to_big(feat_256, train), to_128(feat_128, train)
        feat_512 = se("se_512", feat_32, up("feat_512", feat_256, True))
        if self.im_size == 512:
            return to_big(feat_512, train), to_128(feat_128, train)
        feat_1024 = up("feat_1024", feat_512, False)
        return jnp.tanh(to_big(feat_1024, train)), jnp.tanh(to_128(feat_128, train))
