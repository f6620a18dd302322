"""Writing files so that a reader never sees half of one: JSON, PNG and .npz, atomically."""
import json
import os

import numpy as np
from PIL import Image


def open_new(path, mode="w"):
    """A new file at `path`, opened for writing; FileExistsError if anything is there, a
    symbolic link included (O_EXCL | O_NOFOLLOW: a planted link is never followed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    return os.fdopen(fd, mode)


def replace_atomically(path, write, mode="w"):
    """Write through `write(file)` to a new temporary file beside `path`, then rename it over
    `path` (a link at `path` is replaced, not followed)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)  # left by a killed process with our pid; never followed
    try:
        with open_new(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def write_json(path, obj, sort_keys=False):
    """`obj` as indented JSON at `path`, replaced atomically."""
    replace_atomically(path, lambda f: json.dump(obj, f, indent=2, sort_keys=sort_keys))


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
    replace_atomically(path, lambda f: Image.fromarray(image).save(f, format="PNG"), "wb")


def write_npz(path, **arrays):
    """numpy arrays as an .npz at `path`, replaced atomically."""
    replace_atomically(path, lambda f: np.savez(f, **arrays), "wb")


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
