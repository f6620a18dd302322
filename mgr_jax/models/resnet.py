"""ResNet family with torchvision's layer layout, returning (logits, pooled features).

Parameter names mirror torchvision's state_dict keys so that conversion is one explicit map:
torch `layer2.0.downsample.1.running_var` is Flax `batch_stats/layer2_0/downsample_1/var`.
Padding is explicit (PyTorch pads symmetrically; Flax "SAME" does not for stride 2).
"""
import functools
from typing import Sequence, Type

import flax.linen as nn
import jax
import jax.numpy as jnp


class TorchBatchNorm(nn.Module):
    """BatchNorm with PyTorch's conventions (running stats in collection `batch_stats`).

    PyTorch normalises with the biased batch variance but stores the unbiased one, and its
    momentum weights the new value: running = (1 - momentum) * running + momentum * batch.
    """
    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        mean_ra = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        var_ra = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        if train:
            x32 = x.astype(jnp.float32)
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x32, axes)
            var = jnp.mean(jnp.square(x32 - mean), axes)
            if not self.is_initializing():
                n = x32.size // features
                unbiased = var * (n / max(n - 1, 1))
                mean_ra.value = (1 - self.momentum) * mean_ra.value + self.momentum * mean
                var_ra.value = (1 - self.momentum) * var_ra.value + self.momentum * unbiased
        else:
            mean, var = mean_ra.value, var_ra.value
        mul = scale * jnp.reciprocal(jnp.sqrt(var + self.epsilon))
        return (x * mul.astype(self.dtype) + (bias - mean * mul).astype(self.dtype)).astype(self.dtype)


def _out_size(size, k, stride, pad):
    """Output length of a convolution along one spatial axis (symmetric padding)."""
    return (size + 2 * pad - k) // stride + 1


def patches_conv(x, kernel, stride, pad):
    """NHWC x HWIO convolution, symmetric zero padding, as one matrix product of patches.

    The k*k shifted (strided) views of the padded input are concatenated on the channel axis
    in the kernel's (row, column, input channel) order, so the kernel reshapes to a matrix.
    """
    k, _, cin, cout = kernel.shape
    h, w = x.shape[1:3]
    ho, wo = _out_size(h, k, stride, pad), _out_size(w, k, stride, pad)
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    views = [xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
             for i in range(k) for j in range(k)]
    return jnp.concatenate(views, axis=-1) @ kernel.reshape(k * k * cin, cout)


class Conv(nn.Module):
    """Square convolution without bias, torchvision's symmetric padding; `kernel` is HWIO,
    the same parameter as nn.Conv's.

    Where the input or the output is smaller than the window (k*k > H*W: 3x3 on ResNet's last
    stage at 16x16 inputs, whose activations are 2x2), XLA swaps the convolution's operands
    (ConvOperandSwapper), and the swapped form, or its gradient, runs on the CPU in a generic
    layout about 7x slower than the same arithmetic as patches @ kernel. Those convolutions
    are computed by `patches_conv` (same values; tested against lax.conv_general_dilated).
    """
    features: int
    kernel_size: int
    stride: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        k, s = self.kernel_size, self.stride
        kernel = self.param("kernel", nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                            (k, k, x.shape[-1], self.features), jnp.float32)
        x, kernel, pad = x.astype(self.dtype), kernel.astype(self.dtype), (k - 1) // 2
        h, w = x.shape[1:3]
        out_area = _out_size(h, k, s, pad) * _out_size(w, k, s, pad)
        if k > 1 and min(h * w, out_area) < k * k:
            return patches_conv(x, kernel, s, pad)
        return jax.lax.conv_general_dilated(x, kernel, (s, s), ((pad, pad), (pad, pad)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv(features, kernel, stride, name, dtype):
    return Conv(features, kernel, stride, dtype, name=name)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity or 1x1 projection shortcut (expansion 1)."""
    features: int
    stride: int = 1
    dtype: jnp.dtype = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool):
        bn = functools.partial(TorchBatchNorm, dtype=self.dtype)
        y = _conv(self.features, 3, self.stride, "conv1", self.dtype)(x)
        y = nn.relu(bn(name="bn1")(y, train))
        y = _conv(self.features, 3, 1, "conv2", self.dtype)(y)
        y = bn(name="bn2")(y, train)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = _conv(self.features, 1, self.stride, "downsample_0", self.dtype)(x)
            x = bn(name="downsample_1")(x, train)
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """1x1 - 3x3 (strided, as torchvision v1.5) - 1x1 convolutions, expansion 4."""
    features: int
    stride: int = 1
    dtype: jnp.dtype = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool):
        bn = functools.partial(TorchBatchNorm, dtype=self.dtype)
        out = self.features * self.expansion
        y = nn.relu(bn(name="bn1")(_conv(self.features, 1, 1, "conv1", self.dtype)(x), train))
        y = nn.relu(bn(name="bn2")(_conv(self.features, 3, self.stride, "conv2", self.dtype)(y), train))
        y = bn(name="bn3")(_conv(out, 1, 1, "conv3", self.dtype)(y), train)
        if self.stride != 1 or x.shape[-1] != out:
            x = _conv(out, 1, self.stride, "downsample_0", self.dtype)(x)
            x = bn(name="downsample_1")(x, train)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """torchvision ResNet: `apply(v, x, train)` -> (logits (N, classes), features (N, D)).

    x is NHWC, already normalised. `cifar_stem` swaps the 7x7/2 conv + max-pool for one 3x3/1
    conv (small inputs); `width` scales every stage's channels (64 * width at the stem);
    `remat` trades memory for compute: each residual block's activations are recomputed when
    the backward pass needs them instead of being kept (same results).
    """
    block: Type[nn.Module]
    stage_sizes: Sequence[int]
    num_classes: int = 1000
    width: float = 1.0
    cifar_stem: bool = False
    dtype: jnp.dtype = jnp.float32
    remat: bool = False  # recompute each block's activations in the backward pass

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.astype(self.dtype)
        base = max(1, int(round(64 * self.width)))
        if self.cifar_stem:
            x = _conv(base, 3, 1, "conv1", self.dtype)(x)
        else:
            x = _conv(base, 7, 2, "conv1", self.dtype)(x)
        x = nn.relu(TorchBatchNorm(dtype=self.dtype, name="bn1")(x, train))
        if not self.cifar_stem:
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        # nn.remat keeps the block's name, so the variables are the same with or without it
        block = nn.remat(self.block, static_argnums=(2,)) if self.remat else self.block
        for i, blocks in enumerate(self.stage_sizes):
            for j in range(blocks):
                stride = 2 if i > 0 and j == 0 else 1
                x = block(base * 2 ** i, stride, self.dtype, name=f"layer{i + 1}_{j}")(x, train)
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, name="fc")(features)
        return logits, features


# ResNet-10: one basic block per stage (not a torchvision model; for fast small experiments).
ResNet10 = functools.partial(ResNet, block=BasicBlock, stage_sizes=(1, 1, 1, 1))
ResNet18 = functools.partial(ResNet, block=BasicBlock, stage_sizes=(2, 2, 2, 2))
ResNet34 = functools.partial(ResNet, block=BasicBlock, stage_sizes=(3, 4, 6, 3))
ResNet50 = functools.partial(ResNet, block=Bottleneck, stage_sizes=(3, 4, 6, 3))
ResNet101 = functools.partial(ResNet, block=Bottleneck, stage_sizes=(3, 4, 23, 3))
ResNet152 = functools.partial(ResNet, block=Bottleneck, stage_sizes=(3, 8, 36, 3))

ARCHS = {"resnet10": ResNet10, "resnet18": ResNet18, "resnet34": ResNet34, "resnet50": ResNet50,
         "resnet101": ResNet101, "resnet152": ResNet152}


def create_model(arch: str, **kwargs) -> ResNet:
    """Build a ResNet by name (`resnet10`, `resnet18`, `resnet34`, `resnet50`, `resnet101`,
    `resnet152`)."""
    if arch not in ARCHS:
        raise ValueError(f"model.arch={arch!r} is not known; choose one of {sorted(ARCHS)}")
    return ARCHS[arch](**kwargs)
