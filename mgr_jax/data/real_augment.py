"""Real-data augmentation (paper Table 3): RandAugment, TrivialAugment, AugMix on uint8 images.

The ops and their magnitude tables follow torchvision's `autoaugment` module (the paper's
PyTorch setting), written here with PIL and numpy:

- RandAugment: N=2 ops per image, magnitude 9 of 31 bins, each op chosen uniformly among 14
  (Identity, ShearX/Y, TranslateX/Y, Rotate, Brightness, Color, Contrast, Sharpness,
  Posterize, Solarize, AutoContrast, Equalize); signed ops flip sign with probability 1/2.
- TrivialAugment (TrivialAugmentWide): one op, its magnitude uniform over 31 bins of the
  wide ranges (shear 0.99, translate 32 px, rotate 135 deg, enhance 0.99, posterize 2..8).
- AugMix: width 3 chains of depth 1-3 (depth -1), severity 3 (magnitudes from the first 3
  of 10 bins, torchvision's _PARAMETER_MAX), all ops,
  Dirichlet(1, 1, 1) chain weights and Beta(1, 1) mix with the original; the mix is cast
  back to uint8 by truncation, as torchvision.

Geometric ops use nearest sampling and fill with black (torchvision's default fill). Every
random draw comes from the numpy Generator the caller passes, so a seeded Generator gives
the same images on any machine. Loader workers call `get(name)(pil_image, rng)`; the
in-memory pipeline uses `array_augment_fn(name)` on normalised float batches.
"""
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

NAMES = ("none", "randaugment", "trivialaugment", "augmix")


def _affine(image, matrix):
    """PIL affine warp; `matrix` maps output (x, y) to input (a x + b y + c, d x + e y + f)."""
    return image.transform(image.size, Image.AFFINE, matrix, resample=Image.NEAREST,
                           fillcolor=(0,) * len(image.getbands()))


def shear_x(image, m):
    # torchvision: affine with shear atan(m) degrees about the top-left corner.
    return _affine(image, (1.0, m, 0.0, 0.0, 1.0, 0.0))


def shear_y(image, m):
    return _affine(image, (1.0, 0.0, 0.0, m, 1.0, 0.0))


def translate_x(image, m):
    return _affine(image, (1.0, 0.0, -float(int(m)), 0.0, 1.0, 0.0))


def translate_y(image, m):
    return _affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, -float(int(m))))


def rotate(image, degrees):
    return image.rotate(degrees, resample=Image.NEAREST, fillcolor=(0,) * len(image.getbands()))


def brightness(image, m):
    return ImageEnhance.Brightness(image).enhance(1.0 + m)


def color(image, m):
    return ImageEnhance.Color(image).enhance(1.0 + m)


def contrast(image, m):
    return ImageEnhance.Contrast(image).enhance(1.0 + m)


def sharpness(image, m):
    return ImageEnhance.Sharpness(image).enhance(1.0 + m)


def posterize(image, bits):
    return ImageOps.posterize(image, int(bits))


def solarize(image, threshold):
    # Pixels >= threshold are inverted (threshold 255 still inverts pure white, as torchvision).
    return ImageOps.solarize(image, threshold)


OPS = {
    "Identity": lambda image, m: image,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "Rotate": rotate,
    "Brightness": brightness,
    "Color": color,
    "Contrast": contrast,
    "Sharpness": sharpness,
    "Posterize": posterize,
    "Solarize": solarize,
    "AutoContrast": lambda image, m: ImageOps.autocontrast(image),
    "Equalize": lambda image, m: ImageOps.equalize(image),
}


def apply_op(image, name, magnitude):
    """Apply op `name` with a signed magnitude in the op's own units."""
    return OPS[name](image, magnitude)


def _posterize_bits(num_bins, span, top=8):
    # torchvision: top - (arange(bins) / ((bins - 1) / span)).round() (round half to even).
    return (top - np.round(np.arange(num_bins) / ((num_bins - 1) / span))).astype(int)


def randaugment_space(num_bins, width, height):
    """{op: (magnitudes (num_bins,) or None, signed)} of torchvision's RandAugment."""
    lin = lambda hi: np.linspace(0.0, hi, num_bins)  # noqa: E731
    return {
        "Identity": (None, False),
        "ShearX": (lin(0.3), True),
        "ShearY": (lin(0.3), True),
        "TranslateX": (lin(150.0 / 331.0 * width), True),
        "TranslateY": (lin(150.0 / 331.0 * height), True),
        "Rotate": (lin(30.0), True),
        "Brightness": (lin(0.9), True),
        "Color": (lin(0.9), True),
        "Contrast": (lin(0.9), True),
        "Sharpness": (lin(0.9), True),
        "Posterize": (_posterize_bits(num_bins, 4), False),
        "Solarize": (np.linspace(255.0, 0.0, num_bins), False),
        "AutoContrast": (None, False),
        "Equalize": (None, False),
    }


def trivialaugment_space(num_bins):
    """{op: (magnitudes or None, signed)} of torchvision's TrivialAugmentWide."""
    lin = lambda hi: np.linspace(0.0, hi, num_bins)  # noqa: E731
    return {
        "Identity": (None, False),
        "ShearX": (lin(0.99), True),
        "ShearY": (lin(0.99), True),
        "TranslateX": (lin(32.0), True),
        "TranslateY": (lin(32.0), True),
        "Rotate": (lin(135.0), True),
        "Brightness": (lin(0.99), True),
        "Color": (lin(0.99), True),
        "Contrast": (lin(0.99), True),
        "Sharpness": (lin(0.99), True),
        "Posterize": (_posterize_bits(num_bins, 6), False),
        "Solarize": (np.linspace(255.0, 0.0, num_bins), False),
        "AutoContrast": (None, False),
        "Equalize": (None, False),
    }


def augmix_space(num_bins, width, height):
    """{op: (magnitudes or None, signed)} of torchvision's AugMix with all_ops=True."""
    lin = lambda hi: np.linspace(0.0, hi, num_bins)  # noqa: E731
    return {
        "ShearX": (lin(0.3), True),
        "ShearY": (lin(0.3), True),
        "TranslateX": (lin(width / 3.0), True),
        "TranslateY": (lin(height / 3.0), True),
        "Rotate": (lin(30.0), True),
        "Posterize": (_posterize_bits(num_bins, 4, top=4), False),
        "Solarize": (np.linspace(255.0, 0.0, num_bins), False),
        "AutoContrast": (None, False),
        "Equalize": (None, False),
        "Brightness": (lin(0.9), True),
        "Color": (lin(0.9), True),
        "Contrast": (lin(0.9), True),
        "Sharpness": (lin(0.9), True),
    }


def _signed(magnitude, signed, rng):
    if signed and rng.integers(2):
        return -magnitude
    return magnitude


def randaugment(image, rng, num_ops=2, magnitude=9, num_bins=31):
    """torchvision RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=31)."""
    space = randaugment_space(num_bins, image.width, image.height)
    names = list(space)
    for _ in range(num_ops):
        name = names[int(rng.integers(len(names)))]
        mags, signed = space[name]
        m = float(mags[magnitude]) if mags is not None else 0.0
        image = apply_op(image, name, _signed(m, signed, rng))
    return image


def trivialaugment(image, rng, num_bins=31):
    """torchvision TrivialAugmentWide(num_magnitude_bins=31)."""
    space = trivialaugment_space(num_bins)
    names = list(space)
    name = names[int(rng.integers(len(names)))]
    mags, signed = space[name]
    m = float(mags[int(rng.integers(len(mags)))]) if mags is not None else 0.0
    return apply_op(image, name, _signed(m, signed, rng))


def augmix(image, rng, severity=3, width=3, depth=-1, alpha=1.0, num_bins=10):
    """torchvision AugMix(severity=3, mixture_width=3, chain_depth=-1, alpha=1, all_ops=True)."""
    space = augmix_space(num_bins, image.width, image.height)
    names = list(space)
    original = np.asarray(image, np.float32)
    m = rng.dirichlet([alpha, alpha])
    weights = rng.dirichlet([alpha] * width) * m[1]
    mix = m[0] * original
    for i in range(width):
        aug = image
        chain = depth if depth > 0 else int(rng.integers(1, 4))
        for _ in range(chain):
            name = names[int(rng.integers(len(names)))]
            mags, signed = space[name]
            mag = float(mags[int(rng.integers(severity))]) if mags is not None else 0.0
            aug = apply_op(aug, name, _signed(mag, signed, rng))
        mix += weights[i] * np.asarray(aug, np.float32)
    return Image.fromarray(np.clip(mix, 0, 255).astype(np.uint8))


_AUGMENTERS = {"randaugment": randaugment, "trivialaugment": trivialaugment, "augmix": augmix}


def get(name):
    """`fn(pil_image, rng) -> pil_image` for a config.data.augment name; None for "none"."""
    if name == "none":
        return None
    if name not in _AUGMENTERS:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {list(NAMES)}")
    return _AUGMENTERS[name]


def augment_uint8(images, name, rngs):
    """Augment a uint8 batch (N, H, W, 3) image by image, image k with the numpy Generator
    `rngs[k]`; returns a new uint8 batch."""
    fn = get(name)
    if fn is None:
        return images
    return np.stack([np.asarray(fn(Image.fromarray(x), rng)) for x, rng in zip(images, rngs)])


def array_augment_fn(name):
    """The in-memory pipeline's hook: `fn(images01 (N, H, W, 3) float in [0, 1], rngs)` (one
    Generator per image), or None for "none". Images are rounded to uint8 RGB (the ops'
    domain), augmented, scaled back."""
    if name == "none":
        return None
    get(name)  # fail on a bad name now, not in the first batch.

    def fn(images01, rngs):
        u8 = np.clip(np.rint(images01 * 255.0), 0, 255).astype(np.uint8)
        return augment_uint8(u8, name, rngs).astype(np.float32) / 255.0

    return fn
