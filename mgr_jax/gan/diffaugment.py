"""DiffAugment (Zhao et al., 2020): differentiable augmentation of D's inputs, real and fake.

The GAN trainer applies the same random policy to every image D sees (reals, fakes, and the
reals of the R1 penalty, whose gradient is taken with respect to the un-augmented image as in
StyleGAN2-ADA). Every op is a jax.numpy function of the image, differentiable in it; the random
parameters come from an explicit key. Images are NHWC in G's [-1, 1] scale.

    policy "color"        brightness +U(-0.5, 0.5), saturation xU(0, 2), contrast xU(0.5, 1.5)
    policy "translation"  integer shift up to `translation_ratio` of the side, zero fill
    policy "cutout"       one zeroed square of side `cutout_ratio` of the side, random centre
"""
import jax
import jax.numpy as jnp

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy):
    """"color,translation" -> ("color", "translation"); ValueError for an unknown op."""
    ops = tuple(p.strip() for p in policy.split(",") if p.strip())
    for op in ops:
        if op not in POLICIES:
            raise ValueError(f"unknown DiffAugment op {op!r}; choose from {list(POLICIES)}")
    return ops


def rand_brightness(key, x):
    """x + U(-0.5, 0.5), one value per image."""
    return x + (jax.random.uniform(key, (x.shape[0], 1, 1, 1), x.dtype) - 0.5)


def rand_saturation(key, x):
    """Scale the deviation from the per-pixel channel mean by U(0, 2) (no-op on grey images)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    return (x - mean) * (2.0 * jax.random.uniform(key, (x.shape[0], 1, 1, 1), x.dtype)) + mean


def rand_contrast(key, x):
    """Scale the deviation from the per-image mean by U(0.5, 1.5)."""
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    return (x - mean) * (jax.random.uniform(key, (x.shape[0], 1, 1, 1), x.dtype) + 0.5) + mean


def _shift_axis(x, shift, axis):
    """out[..., i, ...] = x[..., i + shift, ...] along `axis` (1 or 2), 0 outside; per image."""
    size = x.shape[axis]
    src = jnp.arange(size)[None, :] + shift[:, None]  # (N, size)
    valid = (src >= 0) & (src < size)
    src = jnp.clip(src, 0, size - 1)
    if axis == 1:
        out = jnp.take_along_axis(x, src[:, :, None, None], axis=1)
        return out * valid[:, :, None, None].astype(x.dtype)
    out = jnp.take_along_axis(x, src[:, None, :, None], axis=2)
    return out * valid[:, None, :, None].astype(x.dtype)


def rand_translation(key, x, ratio=0.125):
    """Shift each image by integers in [-s, s] per axis, s = round(ratio * side), zero fill."""
    n, h, w, _ = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ky, kx = jax.random.split(key)
    ty = jax.random.randint(ky, (n,), -sh, sh + 1)
    tx = jax.random.randint(kx, (n,), -sw, sw + 1)
    return _shift_axis(_shift_axis(x, ty, 1), tx, 2)


def rand_cutout(key, x, ratio=0.5):
    """Zero one square of side round(ratio * side) per image, centred uniformly (may clip)."""
    n, h, w, _ = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ky, kx = jax.random.split(key)
    y0 = jax.random.randint(ky, (n,), 0, h + (1 - ch % 2)) - ch // 2
    x0 = jax.random.randint(kx, (n,), 0, w + (1 - cw % 2)) - cw // 2
    rows, cols = jnp.arange(h)[None, :], jnp.arange(w)[None, :]
    in_y = (rows >= y0[:, None]) & (rows < y0[:, None] + ch)  # (N, H)
    in_x = (cols >= x0[:, None]) & (cols < x0[:, None] + cw)  # (N, W)
    keep = 1.0 - (in_y[:, :, None] & in_x[:, None, :]).astype(x.dtype)
    return x * keep[..., None]


def diff_augment(key, x, policy=POLICIES, translation_ratio=0.125, cutout_ratio=0.5):
    """Apply the ops of `policy` (a tuple or a comma string) in the order color, translation,
    cutout; (N, H, W, C) -> same shape. An empty policy returns x."""
    ops = parse_policy(policy) if isinstance(policy, str) else tuple(policy)
    keys = jax.random.split(key, 5)
    if "color" in ops:
        x = rand_brightness(keys[0], x)
        x = rand_saturation(keys[1], x)
        x = rand_contrast(keys[2], x)
    if "translation" in ops:
        x = rand_translation(keys[3], x, translation_ratio)
    if "cutout" in ops:
        x = rand_cutout(keys[4], x, cutout_ratio)
    return x
