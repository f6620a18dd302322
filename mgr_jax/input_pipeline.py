"""Splits of the SPEC's protocol and the in-memory input pipeline of the embedded dataset.

Every pipeline yields batches as dicts of numpy arrays:
    train: {"image": (B, S, S, 3) float32 normalised, "label": (B,) int32}
           plus "val_image" / "val_label" (a D_val batch) when `with_val` is set (MPS steps);
    eval:  the same keys plus "mask" (B,) float32, 0 on padding (static shapes: one compile).
"""
import dataclasses
from typing import Iterator

import numpy as np


# torchvision's ImageNet statistics: the protocol's input normalisation (RGB, [0, 1] scale).
MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32)
STDDEV_RGB = np.array([0.229, 0.224, 0.225], np.float32)


def normalize(images01):
    """Map [0, 1] RGB images (..., 3) to the classifier's input normalisation."""
    return (images01 - MEAN_RGB) / STDDEV_RGB


def stratified_split(labels, fraction, seed):
    """Split indices into (kept, held_out) with `fraction` of each class held out.

    Deterministic for a seed on any machine (numpy's PCG64). Each class keeps at least one
    sample on each side when it has two or more.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_held = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            n_held = min(max(n_held, 1 if fraction > 0 else 0), len(idx) - 1)
        held.append(idx[:n_held])
        kept.append(idx[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def protocol_splits(train_labels, *, val_fraction, subset_fraction, seed):
    """Indices of D and D_val inside the official training split (SPEC training protocol).

    D / D_val = (1 - val_fraction) : val_fraction by a fixed seed, then D is reduced to
    `subset_fraction` of itself (per class, at least one sample per class).
    """
    d_idx, val_idx = stratified_split(train_labels, val_fraction, seed)
    if subset_fraction < 1.0:
        drop_fraction = 1.0 - subset_fraction
        keep_local, _ = stratified_split(np.asarray(train_labels)[d_idx], drop_fraction, seed + 1)
        d_idx = d_idx[keep_local]
    return d_idx, val_idx


@dataclasses.dataclass
class ArraySplit:
    images: np.ndarray  # (N, S, S, 3) float32, normalised
    labels: np.ndarray  # (N,) int32

    def __len__(self):
        return len(self.labels)


def epoch_order(num_examples, batch_size, seed, epoch):
    """Shuffled indices for one epoch, (steps, batch_size); wraps around for tiny splits."""
    rng = np.random.default_rng([seed, epoch])
    steps = max(1, num_examples // batch_size)
    need = steps * batch_size
    order = np.concatenate([rng.permutation(num_examples)
                            for _ in range(-(-need // num_examples))])
    return order[:need].reshape(steps, batch_size)


class ArrayPipeline:
    """Input pipeline over splits held in memory (the embedded datasets)."""

    def __init__(self, name, num_classes, train, val, test, *, batch_size, eval_batch_size,
                 seed, augment_fn=None):
        self.name, self.num_classes = name, num_classes
        self.splits = {"train": train, "val": val, "test": test}
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.image_size = train.images.shape[1]
        self.steps_per_epoch = max(1, len(train) // batch_size)
        self._augment_fn = augment_fn

    def split_sizes(self):
        return {k: len(v) for k, v in self.splits.items()}

    def train_batches(self, epoch, with_val=False) -> Iterator[dict]:
        """One epoch of full training batches, in an order fixed by (seed, epoch)."""
        train, val = self.splits["train"], self.splits["val"]
        order = epoch_order(len(train), self.batch_size, self.seed, epoch)
        val_order = epoch_order(len(val), self.batch_size, self.seed + 7919, epoch)
        aug_rng = np.random.default_rng([self.seed, epoch, 1])
        for step, idx in enumerate(order):
            images = train.images[idx]
            if self._augment_fn is not None:
                images = self._augment_fn(images, aug_rng)
            batch = {"image": images, "label": train.labels[idx]}
            if with_val:
                v = val_order[step % len(val_order)]
                batch["val_image"], batch["val_label"] = val.images[v], val.labels[v]
            yield batch

    def eval_batches(self, split) -> Iterator[dict]:
        """The whole split in order, the last batch zero-padded and masked."""
        data = self.splits[split]
        bs = self.eval_batch_size
        for start in range(0, len(data), bs):
            images = data.images[start:start + bs]
            labels = data.labels[start:start + bs]
            n = len(labels)
            mask = np.zeros(bs, np.float32)
            mask[:n] = 1.0
            if n < bs:
                images = np.concatenate([images, np.zeros((bs - n,) + images.shape[1:],
                                                          images.dtype)])
                labels = np.concatenate([labels, np.zeros(bs - n, labels.dtype)])
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


def load_digits_arrays(image_size):
    """scikit-learn's digits as ([0, 1] RGB images (N, S, S, 3), int32 labels (N,))."""
    from sklearn.datasets import load_digits  # scikit-learn ships the data in its wheel.
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    images = _resize_bilinear(images, image_size)
    return np.repeat(images, 3, axis=-1), digits.target.astype(np.int32)


def create_pipeline(config):
    """Build the input pipeline the config names (a clear UserError for unknown names)."""
    data = config.data
    if data.name == "digits":
        images01, labels = load_digits_arrays(data.image_size)
        # digits has no official test split: a fixed-seed stratified one stands in.
        train_idx, test_idx = stratified_split(labels, data.test_fraction, data.split_seed)
        d_local, val_local = protocol_splits(labels[train_idx], val_fraction=data.val_fraction,
                                             subset_fraction=data.subset_fraction,
                                             seed=data.split_seed)
        d_idx, val_idx = train_idx[d_local], train_idx[val_local]
        images = normalize(images01)
        split = lambda idx: ArraySplit(images[idx], labels[idx])  # noqa: E731
        from mgr_jax import real_augment  # noqa: PLC0415 (PIL only when digits are used)
        return ArrayPipeline("digits", 10, split(d_idx), split(val_idx), split(test_idx),
                             batch_size=config.batch_size,
                             eval_batch_size=config.eval_batch_size, seed=config.seed,
                             augment_fn=real_augment.array_augment_fn(data.augment))
    from mgr_jax import datasets  # noqa: PLC0415 (the paper's datasets and image folders)
    return datasets.create_pipeline(config)
