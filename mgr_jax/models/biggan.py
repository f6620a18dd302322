"""BigGAN generator (Brock et al. 2019) with the layer layout of the official BigGAN-PyTorch code.

Fields carry the official `Generator`'s keyword names (G_ch, G_attn, ...) so that a checkpoint's
constructor settings map one to one. `apply(variables, z, labels, train=False)` -> NHWC images
in [-1, 1] (tanh output). Variable collections:
    params          kernels (HWIO / (in, out)), biases, class embeddings, attention gamma
    batch_stats     `mean` / `var`: the official `stored_mean` / `stored_var`
    spectral_norm   `u` (num_G_SVs, out): the official `u0`, `u1`, ... left singular vectors
Eval mode (train=False) runs one power step from the stored u without storing it and normalises
with the stored BatchNorm statistics, as the official code does under `G.eval()`. train=True
uses batch statistics and chains num_G_SV_itrs power steps; both are written back only when
the collections are passed as mutable.
"""
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

# Channel multipliers of G_ch per block, (in, out), as the official G_arch defines them.
_ARCH_MULTIPLIERS = {
    32: ((4, 4, 4), (4, 4, 4)),
    64: ((16, 16, 8, 4), (16, 8, 4, 2)),
    128: ((16, 16, 8, 4, 2), (16, 8, 4, 2, 1)),
    256: ((16, 16, 8, 8, 4, 2), (16, 8, 8, 4, 2, 1)),
    512: ((16, 16, 8, 8, 4, 2, 1), (16, 8, 8, 4, 2, 1, 1)),
}


def g_arch(G_ch, resolution, G_attn):  # noqa: N803 (official names)
    """Per-block in/out channels, output resolution and attention flag for one resolution."""
    if resolution not in _ARCH_MULTIPLIERS:
        raise ValueError(f"resolution={resolution} is not one of the official BigGAN sizes "
                         f"{sorted(_ARCH_MULTIPLIERS)}")
    mult_in, mult_out = _ARCH_MULTIPLIERS[resolution]
    attn_res = {int(item) for item in str(G_attn).split("_") if item.strip()}
    res = [2 ** (i + 3) for i in range(len(mult_in))]
    return {"in_channels": [G_ch * m for m in mult_in],
            "out_channels": [G_ch * m for m in mult_out],
            "resolution": res,
            "attention": [r in attn_res for r in res]}


def _normalize(x, eps):
    """F.normalize for a vector: x / max(||x||, eps)."""
    return x / jnp.maximum(jnp.linalg.norm(x), eps)


def _gram_schmidt(x, ys):
    """Remove from x its projections on the (not necessarily unit) vectors ys."""
    for y in ys:
        x = x - jnp.dot(y, x) * y / jnp.dot(y, y)
    return x


def _power_iteration(w_mat, us, eps, precision):
    """One official power step for every singular vector: w_mat (out, in), us (k, out).

    Returns (sigmas list of scalars, new us (k, out)). u and v are constants (the official code
    computes them under no_grad); sigma = v W^T u^T stays differentiable in W.
    """
    w_const = jax.lax.stop_gradient(w_mat)
    new_us, vs, sigmas = [], [], []
    for i in range(us.shape[0]):
        v = _normalize(_gram_schmidt(jnp.dot(us[i], w_const, precision=precision), vs), eps)
        vs.append(v)
        u = _normalize(_gram_schmidt(jnp.dot(v, w_const.T, precision=precision), new_us), eps)
        new_us.append(u)
        sigmas.append(jnp.dot(jnp.dot(w_mat, v, precision=precision), u, precision=precision))
    return sigmas, jnp.stack(new_us)


def _spectral_normalize(mdl, w_mat, train, num_svs, num_itrs, eps, precision):
    """w_mat (out, in) -> w_mat / sigma_0, with the `u` buffer (num_svs, out) held by `mdl`."""
    u_var = mdl.variable(
        "spectral_norm", "u",
        lambda: jax.random.normal(mdl.make_rng("params"), (num_svs, w_mat.shape[0])))
    us = u_var.value
    if train:
        # Training mode updates u in place, so the iterations chain.
        for _ in range(num_itrs):
            sigmas, us = _power_iteration(w_mat, us, eps, precision)
        if mdl.is_mutable_collection("spectral_norm") and not mdl.is_initializing():
            u_var.value = us
    else:
        # Eval mode never stores u: every iteration restarts from it, so one step is enough.
        sigmas, _ = _power_iteration(w_mat, us, eps, precision)
    return w_mat / sigmas[0]


class SNDense(nn.Module):
    """Official SNLinear (or nn.Linear when spectral is False): (N, in) -> (N, features)."""
    features: int
    use_bias: bool = True
    spectral: bool = True
    num_svs: int = 1
    num_itrs: int = 1
    eps: float = 1e-12
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x, train: bool):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        if self.spectral:
            kernel = _spectral_normalize(self, kernel.T, train, self.num_svs, self.num_itrs,
                                         self.eps, self.precision).T
        y = jnp.dot(x, kernel, precision=self.precision)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


class SNConv(nn.Module):
    """Official SNConv2d, stride 1, 'same' padding: (N, H, W, in) -> (N, H, W, features)."""
    features: int
    kernel_size: int = 3
    use_bias: bool = True
    spectral: bool = True
    num_svs: int = 1
    num_itrs: int = 1
    eps: float = 1e-12
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x, train: bool):
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (k, k, x.shape[-1], self.features))
        if self.spectral:
            # sigma does not depend on the order of W's columns, so HWIO can be flattened as is.
            w_mat = kernel.reshape(-1, self.features).T
            w_mat = _spectral_normalize(self, w_mat, train, self.num_svs, self.num_itrs,
                                        self.eps, self.precision)
            kernel = w_mat.T.reshape(kernel.shape)
        pad = (k - 1) // 2
        y = jax.lax.conv_general_dilated(
            x, kernel, (1, 1), ((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


def _normalize_batch(mdl, x, train, eps, momentum=0.1, style="bn"):
    """Official F.batch_norm / instance_norm with stored statistics, no affine part.

    x (N, H, W, C). The statistics live in `batch_stats` (mean, var); train=True normalises with
    the biased batch variance and, when mutable, stores the unbiased one with PyTorch momentum.
    """
    c = x.shape[-1]
    mean_var = mdl.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
    var_var = mdl.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
    if style == "nonorm":
        return x
    if style not in ("bn", "in"):
        raise ValueError(f"norm_style={style!r} is not supported: expected bn, in or nonorm")
    if not train:
        return (x - mean_var.value) / jnp.sqrt(var_var.value + eps)
    axes = (1, 2) if style == "in" else (0, 1, 2)
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    if mdl.is_mutable_collection("batch_stats") and not mdl.is_initializing():
        # instance_norm averages the per-instance statistics into the running ones.
        bmean = jnp.mean(mean, axis=(0, 1, 2))
        n = x.size // c if style == "bn" else x.shape[1] * x.shape[2]
        bvar = jnp.mean(var, axis=(0, 1, 2)) * (n / max(n - 1, 1))
        mean_var.value = (1 - momentum) * mean_var.value + momentum * bmean
        var_var.value = (1 - momentum) * var_var.value + momentum * bvar
    return (x - mean) / jnp.sqrt(var + eps)


class CCBN(nn.Module):
    """Official class-conditional BatchNorm: normalize(x) * (1 + gain(y)) + bias(y).

    y is (N, input_size) floats (shared embedding, plus a z chunk when hier) fed to bias-free
    SN linears, or, when G_shared is off, int class labels (N,) fed to per-class embeddings.
    """
    eps: float = 1e-5
    norm_style: str = "bn"
    shared: bool = True
    n_classes: int = 0
    sn: Any = None  # dict of SN settings for the gain / bias linears

    @nn.compact
    def __call__(self, x, y, train: bool):
        c = x.shape[-1]
        if self.shared:
            gain = SNDense(c, use_bias=False, **self.sn, name="gain")(y, train)
            bias = SNDense(c, use_bias=False, **self.sn, name="bias")(y, train)
        else:
            gain = _ClassEmbed(self.n_classes, c, name="gain")(y)
            bias = _ClassEmbed(self.n_classes, c, name="bias")(y)
        out = _normalize_batch(self, x, train, self.eps, style=self.norm_style)
        return out * (1 + gain[:, None, None, :]) + bias[:, None, None, :]


class _ClassEmbed(nn.Module):
    """nn.Embedding on int labels (N,), or a weighted mix of rows for (N, n_classes) labels."""
    num_embeddings: int
    features: int

    @nn.compact
    def __call__(self, labels):
        table = self.param("embedding", nn.initializers.normal(1.0),
                           (self.num_embeddings, self.features))
        if labels.ndim == 2:  # one-hot or soft labels: differentiable class mixing
            return jnp.dot(labels.astype(table.dtype), table, precision="highest")
        return jnp.take(table, labels.astype(jnp.int32), axis=0)


class OutputBN(nn.Module):
    """Official layers.bn: unconditional BatchNorm with `gain` / `bias` parameters."""
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x, train: bool):
        c = x.shape[-1]
        gain = self.param("gain", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        return _normalize_batch(self, x, train, self.eps) * gain + bias


def _upsample2(x):
    """F.interpolate(scale_factor=2), nearest: (N, H, W, C) -> (N, 2H, 2W, C)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class GBlock(nn.Module):
    """Official GBlock: bn-relu-up-conv-bn-relu-conv plus an (upsampled, 1x1) shortcut."""
    out_channels: int
    upsample: bool
    bn: Any  # CCBN partial
    sn: Any

    @nn.compact
    def __call__(self, x, y, train: bool):
        h = nn.relu(self.bn(name="bn1")(x, y, train))
        if self.upsample:
            h, x = _upsample2(h), _upsample2(x)
        h = SNConv(self.out_channels, 3, **self.sn, name="conv1")(h, train)
        h = nn.relu(self.bn(name="bn2")(h, y, train))
        h = SNConv(self.out_channels, 3, **self.sn, name="conv2")(h, train)
        if x.shape[-1] != self.out_channels or self.upsample:
            x = SNConv(self.out_channels, 1, **self.sn, name="conv_sc")(x, train)
        return h + x


class Attention(nn.Module):
    """Official self-attention block (SAGAN): x + gamma * o(attend(theta, phi, g)), NHWC."""
    sn: Any

    @nn.compact
    def __call__(self, x, train: bool):
        n, hgt, wid, ch = x.shape
        conv = functools.partial(SNConv, kernel_size=1, use_bias=False, **self.sn)
        theta = conv(ch // 8, name="theta")(x, train).reshape(n, hgt * wid, ch // 8)
        phi = nn.max_pool(conv(ch // 8, name="phi")(x, train), (2, 2), (2, 2))
        g = nn.max_pool(conv(ch // 2, name="g")(x, train), (2, 2), (2, 2))
        phi = phi.reshape(n, -1, ch // 8)
        g = g.reshape(n, -1, ch // 2)
        prec = self.sn["precision"]
        beta = jax.nn.softmax(jnp.einsum("nic,njc->nij", theta, phi, precision=prec), axis=-1)
        o = jnp.einsum("nij,njc->nic", beta, g, precision=prec).reshape(n, hgt, wid, ch // 2)
        o = conv(ch, name="o")(o, train)
        gamma = self.param("gamma", nn.initializers.zeros, ())
        return gamma * o + x


class BigGAN(nn.Module):
    """BigGAN generator: (z (N, dim_z), labels (N,) int) -> images (N, res, res, 3) in [-1, 1].

    With hier, z is cut into len(blocks) + 1 chunks: the first feeds `linear`, chunk i + 1 joins
    the shared class embedding to condition block i. dim_z must then be a multiple of the number
    of chunks (the official code truncates it; the converter stores the truncated value).
    labels may also be one-hot or soft (N, n_classes) floats (a weighted mix of embeddings).
    G_kernel_size is accepted for compatibility and, as in the official code, not used.
    precision: of every matmul / conv ("highest" keeps float32 on GPUs; None: JAX's default).
    """
    resolution: int = 128
    n_classes: int = 1000
    G_ch: int = 64
    dim_z: int = 128
    shared_dim: int = 0
    hier: bool = False
    G_shared: bool = True
    G_attn: str = "64"
    norm_style: str = "bn"
    num_G_SVs: int = 1
    num_G_SV_itrs: int = 1
    bottom_width: int = 4
    G_kernel_size: int = 3
    BN_eps: float = 1e-5
    SN_eps: float = 1e-12
    G_param: str = "SN"
    precision: Optional[str] = "highest"

    @property
    def arch(self):
        """The official G_arch entry for this resolution (channels, attention flags)."""
        return g_arch(self.G_ch, self.resolution, self.G_attn)

    @property
    def num_slots(self):
        """How many chunks z is cut into (1 without hier)."""
        return len(self.arch["in_channels"]) + 1 if self.hier else 1

    @property
    def z_chunk_size(self):
        """Size of each z chunk with hier, else 0 (as the official attribute)."""
        return self.dim_z // self.num_slots if self.hier else 0

    @property
    def latent_dim(self):
        """Size of z the model uses (dim_z truncated to a multiple of the chunks)."""
        return self.z_chunk_size * self.num_slots if self.hier else self.dim_z

    @nn.compact
    def __call__(self, z, labels, train: bool = False):
        arch = self.arch
        if self.hier and not self.G_shared:
            raise ValueError("hier=True needs G_shared=True (the official forward concatenates "
                             "z chunks to the shared class embedding)")
        sn = {"spectral": self.G_param == "SN", "num_svs": self.num_G_SVs,
              "num_itrs": self.num_G_SV_itrs, "eps": self.SN_eps, "precision": self.precision}
        shared_dim = self.shared_dim if self.shared_dim > 0 else self.dim_z
        z = jnp.asarray(z, jnp.float32)
        if z.shape[-1] < self.latent_dim:
            raise ValueError(f"z has {z.shape[-1]} dims, the generator needs {self.latent_dim}")
        if self.G_shared:
            y = _ClassEmbed(self.n_classes, shared_dim, name="shared")(labels)
        else:
            y = labels
        if self.hier:
            c = self.z_chunk_size
            zs = [z[:, i * c:(i + 1) * c] for i in range(self.num_slots)]
            z, ys = zs[0], [jnp.concatenate([y, zi], axis=1) for zi in zs[1:]]
        else:
            ys = [y] * len(arch["in_channels"])
        h = SNDense(arch["in_channels"][0] * self.bottom_width ** 2, **sn, name="linear")(z, train)
        # The official code views the linear output as NCHW.
        h = h.reshape(h.shape[0], -1, self.bottom_width, self.bottom_width).transpose(0, 2, 3, 1)
        bn = functools.partial(CCBN, eps=self.BN_eps, norm_style=self.norm_style,
                               shared=self.G_shared, n_classes=self.n_classes, sn=sn)
        for i, out_ch in enumerate(arch["out_channels"]):
            h = GBlock(out_ch, True, bn, sn, name=f"blocks_{i}_0")(h, ys[i], train)
            if arch["attention"][i]:
                h = Attention(sn, name=f"blocks_{i}_1")(h, train)
        # The official output BatchNorm is built without BN_eps, so it keeps the 1e-5 default.
        h = nn.relu(OutputBN(1e-5, name="output_layer_0")(h, train))
        h = SNConv(3, 3, **sn, name="output_layer_2")(h, train)
        return jnp.tanh(h)
