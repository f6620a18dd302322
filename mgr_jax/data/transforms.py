"""Decoding and the torchvision ImageNet recipe's geometric transforms, with PIL and numpy.

train: RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)) + horizontal flip (p=0.5);
eval:  resize the shorter side to round(size / crop_fraction) (256 for 224) + centre crop.
Both resample with PIL's bilinear filter, as torchvision does on PIL images; each crop and
resize is one `Image.resize(..., box=...)` call (no intermediate image). Randomness comes
from the numpy Generator passed in, so a fixed seed gives the same images anywhere.
"""
import io
import math

from PIL import Image

from mgr_jax.errors import UserError


def decode(data, key=""):
    """Encoded image bytes -> RGB PIL image (grey, palette, CMYK, alpha all become RGB)."""
    try:
        image = Image.open(io.BytesIO(data))
        return image.convert("RGB")
    except Image.UnidentifiedImageError:
        raise UserError(f"cannot decode image {key!r}: not an image format PIL reads (damaged "
                        "file?)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot decode image {key!r}: {' '.join(str(e).split())}") from None


def random_resized_crop_box(width, height, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """(left, top, w, h) of torchvision's RandomResizedCrop.get_params, drawn with `rng`."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    # Fallback: the largest centred crop within the ratio range.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def train_transform(image, size, rng):
    """RandomResizedCrop to (size, size) and a random horizontal flip."""
    left, top, w, h = random_resized_crop_box(image.width, image.height, rng)
    out = image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return out


def eval_transform(image, size, crop_fraction=0.875):
    """Resize the shorter side to round(size / crop_fraction), then centre-crop (size, size).

    torchvision's Resize(256) + CenterCrop(224) in one resample: the crop box is mapped back to
    the source image, so the output pixels sample the same positions.
    """
    resize = int(round(size / crop_fraction))
    width, height = image.size
    if width <= height:
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_w, new_h = int(resize * width / height), resize
    new_w, new_h = max(new_w, size), max(new_h, size)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    sx, sy = width / new_w, height / new_h
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return image.resize((size, size), Image.BILINEAR, box=box)
