"""The in-memory input pipeline of the embedded dataset (scikit-learn's digits).

Implements `mgr_jax.data.loader.Pipeline`. Images are held as float32 [0, 1] RGB and
normalised by `protocol.normalize` when a batch is made, as the grain pipeline does.
"""
import dataclasses
import importlib.util
import os
from typing import Iterator

import numpy as np

from mgr_jax.data import protocol, real_augment


@dataclasses.dataclass
class ArraySplit:
    images: np.ndarray  # (N, S, S, 3) float32 RGB in [0, 1]
    labels: np.ndarray  # (N,) int32

    def __len__(self):
        return len(self.labels)


class ArrayPipeline:
    """Input pipeline over splits held in memory (the embedded datasets).

    `augment_fn(images01 (n, S, S, 3) float32, rngs) -> images01` runs on each training batch,
    with one numpy Generator per image, seeded by (seed, epoch, step, position in the batch).
    `shard=(i, n)`: yield only part i of n of every batch (a process's rows of the global batch
    in a multi-host run); the parts put together are the batches of `shard=(0, 1)`.
    """

    def __init__(self, name, num_classes, train, val, test, *, batch_size, eval_batch_size,
                 seed, augment_fn=None, shard=(0, 1)):
        self.name, self.num_classes = name, num_classes
        self.class_names = [str(c) for c in range(num_classes)]
        self.splits = {"train": train, "val": val, "test": test}
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.image_size = train.images.shape[1]
        self.steps_per_epoch = max(1, len(train) // batch_size)
        self._augment_fn = augment_fn
        self.shard = protocol.check_shard(shard, batch_size, eval_batch_size)

    def split_sizes(self):
        return {k: len(v) for k, v in self.splits.items()}

    def train_batches(self, epoch, with_val=False) -> Iterator[dict]:
        """One epoch of full training batches, in an order fixed by (seed, epoch)."""
        train, val = self.splits["train"], self.splits["val"]
        order = protocol.epoch_order(len(train), self.batch_size, self.seed, epoch)
        val_order = protocol.epoch_order(len(val), self.batch_size, self.seed + protocol.VAL_ORDER_SEED_OFFSET, epoch)
        rows = protocol.shard_rows(self.shard, self.batch_size)
        for step, idx in enumerate(order):
            idx = idx[rows]
            images = train.images[idx]
            if self._augment_fn is not None:
                images = self._augment_fn(images, [np.random.default_rng([self.seed, epoch, step, k])
                                                   for k in range(rows.start, rows.stop)])
            batch = {"image": protocol.normalize(images), "label": train.labels[idx]}
            if with_val:
                v = val_order[step % len(val_order)][rows]
                batch["val_image"] = protocol.normalize(val.images[v])
                batch["val_label"] = val.labels[v]
            yield batch

    def close(self):
        """Nothing to release (the grain pipeline stops its workers here)."""

    def eval_batches(self, split) -> Iterator[dict]:
        """The whole split in order, the last batch zero-padded and masked (this process's
        rows of each)."""
        data = self.splits[split]
        rows = protocol.shard_rows(self.shard, self.eval_batch_size)
        for start in range(0, len(data), self.eval_batch_size):
            lo, hi = start + rows.start, min(start + rows.stop, len(data))
            n, bs = max(hi - lo, 0), rows.stop - rows.start
            images = np.zeros((bs,) + data.images.shape[1:], np.float32)
            labels = np.zeros(bs, data.labels.dtype)
            mask = np.zeros(bs, np.float32)
            images[:n] = protocol.normalize(data.images[lo:lo + n])
            labels[:n] = data.labels[lo:lo + n]
            mask[:n] = 1.0
            yield {"image": images, "label": labels, "mask": mask}


def _resize_bilinear(images, size):
    """Resize (N, h, w, C) float images to (N, size, size, C) with PIL-free numpy bilinear."""
    n, h, w, c = images.shape
    ys = (np.arange(size) + 0.5) * h / size - 0.5
    xs = (np.arange(size) + 0.5) * w / size - 0.5
    y0 = np.clip(np.floor(ys).astype(int), 0, h - 1)
    x0 = np.clip(np.floor(xs).astype(int), 0, w - 1)
    y1, x1 = np.clip(y0 + 1, 0, h - 1), np.clip(x0 + 1, 0, w - 1)
    wy = np.clip(ys - y0, 0, 1)[None, :, None, None]
    wx = np.clip(xs - x0, 0, 1)[None, None, :, None]
    top = images[:, y0][:, :, x0] * (1 - wx) + images[:, y0][:, :, x1] * wx
    bot = images[:, y1][:, :, x0] * (1 - wx) + images[:, y1][:, :, x1] * wx
    return (top * (1 - wy) + bot * wy).astype(np.float32)


def digits_file():
    """The digits as scikit-learn's wheel ships them (`sklearn/datasets/data/digits.csv.gz`:
    1,797 rows of 64 pixels in 0..16 and the label), found without importing scikit-learn
    (1.1 s of every command's start); `sklearn.datasets.load_digits` reads the same file."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-learn is not installed (pip install -r requirements.txt)")
    return os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")


def load_digits_arrays(image_size):
    """scikit-learn's digits as ([0, 1] RGB images (N, S, S, 3), int32 labels (N,))."""
    data = np.loadtxt(digits_file(), delimiter=",")
    images = (data[:, :-1].reshape(-1, 8, 8) / 16.0).astype(np.float32)[..., None]
    images = _resize_bilinear(images, image_size)
    return np.repeat(images, 3, axis=-1), data[:, -1].astype(np.int32)


def create_digits_pipeline(config, shard=(0, 1)):
    """The embedded digits with the protocol's splits (config.data.name == "digits")."""
    data = config.data
    images01, labels = load_digits_arrays(data.image_size)
    # digits has no official test split: a fixed-seed stratified one stands in.
    train_idx, test_idx = protocol.stratified_split(labels, data.test_fraction, data.split_seed)
    d_local, val_local = protocol.protocol_splits(
        labels[train_idx], val_fraction=data.val_fraction, subset_fraction=data.subset_fraction,
        seed=data.split_seed)
    d_idx, val_idx = train_idx[d_local], train_idx[val_local]
    split = lambda idx: ArraySplit(images01[idx], labels[idx])  # noqa: E731
    return ArrayPipeline("digits", 10, split(d_idx), split(val_idx), split(test_idx),
                         batch_size=config.batch_size, eval_batch_size=config.eval_batch_size,
                         seed=config.seed, augment_fn=real_augment.array_augment_fn(data.augment),
                         shard=shard)
