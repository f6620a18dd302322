"""Writing files so that a reader never sees half of one: JSON, PNG and .npz, atomically."""
import json
import os

import numpy as np
from PIL import Image


def _replace_from_tmp(path, write, suffix=""):
    """Write through `write(tmp_path)` to a temporary file beside `path`, then rename it."""
    tmp = f"{path}.{os.getpid()}.tmp{suffix}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj, sort_keys=False):
    """`obj` as indented JSON at `path`, replaced atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=sort_keys)
    _replace_from_tmp(path, write)


def read_json(path):
    """The JSON at `path`, or None when there is no file."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_png(path, image):
    """An image (H, W, C), uint8 or float in [0, 1], as a PNG (C 1: grey, 3 or more: the first
    three channels as RGB), replaced atomically."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    image = image[..., 0] if image.shape[-1] == 1 else image[..., :3]
    _replace_from_tmp(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"), ".png")


def write_npz(path, **arrays):
    """numpy arrays as an .npz at `path`, replaced atomically."""
    _replace_from_tmp(path, lambda tmp: np.savez(tmp, **arrays), ".npz")


def tile_grid(images, cols, gap=0, fill=0):
    """(N, H, W, C) images, N = rows * cols, row-major, as one image of rows x cols cells
    separated by `gap` pixels of value `fill`."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    rows = n // cols
    grid = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, c), fill,
                   images.dtype)
    for i in range(rows * cols):
        r, k = divmod(i, cols)
        grid[r * (h + gap):r * (h + gap) + h, k * (w + gap):k * (w + gap) + w] = images[i]
    return grid
