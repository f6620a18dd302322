"""The SPEC's training protocol as plain numpy functions (a leaf: imports nothing of mgr_jax).

  - the classifier's input normalisation (torchvision's ImageNet statistics), one function for
    real and synthetic images;
  - the splits: D / D_val from the official training split by a fixed seed, then the subset;
  - the epoch order of training batches, and the D_val batches' own order (seed offset).
"""
import numpy as np

# torchvision's ImageNet statistics: the protocol's input normalisation (RGB, [0, 1] scale).
MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32)
STDDEV_RGB = np.array([0.229, 0.224, 0.225], np.float32)
# D_val batches are drawn in their own order: epoch_order(len(D_val), B, seed + offset, epoch).
VAL_ORDER_SEED_OFFSET = 7919


def normalize(images):
    """RGB images (..., 3), uint8 in [0, 255] or float in [0, 1], to the classifier's input.

    The one place where pipelines (and `synthetic`, for generated images) normalise.
    """
    if images.dtype == np.uint8:
        images = images.astype(np.float32) * (1.0 / 255.0)
    return (images - MEAN_RGB) / STDDEV_RGB


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


def epoch_order(num_examples, batch_size, seed, epoch):
    """Shuffled indices for one epoch, (steps, batch_size); wraps around for tiny splits."""
    rng = np.random.default_rng([seed, epoch])
    steps = max(1, num_examples // batch_size)
    need = steps * batch_size
    order = np.concatenate([rng.permutation(num_examples)
                            for _ in range(-(-need // num_examples))])
    return order[:need].reshape(steps, batch_size)


def check_shard(shard, *batch_sizes):
    """`shard` (i, n) as a tuple, after checking that n divides every batch size."""
    index, count = (int(v) for v in shard)
    if not 0 <= index < count:
        raise ValueError(f"shard {shard} must be (i, n) with 0 <= i < n")
    for size in batch_sizes:
        if size % count:
            raise ValueError(f"batch size {size} does not split into {count} equal parts")
    return index, count


def shard_rows(shard, batch_size):
    """The rows of a batch of `batch_size` that part `shard` (i, n) holds, as a slice."""
    index, count = shard
    per = batch_size // count
    return slice(index * per, (index + 1) * per)
