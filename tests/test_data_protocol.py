"""The SPEC's split protocol on the embedded dataset: sizes, stratification, determinism."""
import hashlib

import numpy as np

from sklearn.datasets import load_digits

from mgr_jax.data import loader, memory, protocol
from tests.helpers import tiny_config


def test_stratified_split_fractions_and_disjointness():
    labels = np.repeat(np.arange(5), [40, 30, 20, 10, 3])
    kept, held = protocol.stratified_split(labels, 0.1, seed=0)
    assert len(np.intersect1d(kept, held)) == 0 and len(kept) + len(held) == len(labels)
    np.testing.assert_array_equal(np.bincount(labels[held]), [4, 3, 2, 1, 1])


def test_splits_are_fixed_by_seed_and_change_with_it():
    labels = np.repeat(np.arange(10), 50)
    a = protocol.protocol_splits(labels, val_fraction=0.1, subset_fraction=0.25, seed=3)
    b = protocol.protocol_splits(labels, val_fraction=0.1, subset_fraction=0.25, seed=3)
    c = protocol.protocol_splits(labels, val_fraction=0.1, subset_fraction=0.25, seed=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    d_idx, val_idx = a
    assert len(val_idx) == 50 and len(d_idx) == 10 * round(45 * 0.25)
    # numpy's PCG64 stream is the same on every machine: pin the indices.
    digest = hashlib.sha256(np.concatenate(a).astype(np.int64).tobytes()).hexdigest()
    assert digest == input_pipeline_digest()


def input_pipeline_digest():
    # Recomputed independently: the same rule written as a plain loop.
    labels = np.repeat(np.arange(10), 50)
    rng = np.random.default_rng(3)
    d, v = [], []
    for c in range(10):
        idx = np.flatnonzero(labels == c)[rng.permutation(50)]
        v.append(idx[:5]), d.append(idx[5:])
    d, v = np.sort(np.concatenate(d)), np.sort(np.concatenate(v))
    rng = np.random.default_rng(4)
    keep = []
    dl = labels[d]
    for c in range(10):
        idx = np.flatnonzero(dl == c)[rng.permutation(45)]
        keep.append(idx[round(0.75 * 45):])
    d = d[np.sort(np.concatenate(keep))]
    return hashlib.sha256(np.concatenate([d, v]).astype(np.int64).tobytes()).hexdigest()


def test_digits_pipeline_protocol():
    config = tiny_config(**{"data.subset_fraction": 1.0, "data.image_size": 16})
    p = loader.create_pipeline(config)
    sizes = p.split_sizes()
    assert sum(sizes.values()) == 1797
    assert abs(sizes["test"] - 0.2 * 1797) <= 10
    assert abs(sizes["val"] / (sizes["train"] + sizes["val"]) - 0.1) < 0.01
    batch = next(p.train_batches(0, with_val=True))
    assert batch["image"].shape == (32, 16, 16, 3) and batch["val_image"].shape == (32, 16, 16, 3)
    # normalised with ImageNet statistics: a white pixel maps to (1 - mean) / std.
    np.testing.assert_allclose(batch["image"].max(axis=(0, 1, 2)),
                               (1 - protocol.MEAN_RGB) / protocol.STDDEV_RGB,
                               rtol=1e-5)
    evals = list(p.eval_batches("test"))
    assert sum(b["mask"].sum() for b in evals) == sizes["test"]


def test_epoch_order_is_a_permutation_per_epoch_and_differs_between_epochs():
    a = protocol.epoch_order(100, 10, seed=0, epoch=1)
    b = protocol.epoch_order(100, 10, seed=0, epoch=2)
    assert sorted(a.ravel()) == list(range(100)) and not np.array_equal(a, b)
    tiny = protocol.epoch_order(5, 8, seed=0, epoch=1)
    assert tiny.shape == (1, 8)


def test_both_pipelines_share_one_interface_and_one_normalisation():
    """The in-memory pipeline implements loader.Pipeline (the grain one: test_datasets) and
    normalises exactly once, with protocol.normalize, which treats uint8 and [0, 1] alike."""
    config = tiny_config()
    pipe = loader.create_pipeline(config)
    assert isinstance(pipe, loader.Pipeline) and len(pipe.class_names) == pipe.num_classes
    test = pipe.splits["test"]
    assert test.images.min() >= 0.0 and test.images.max() <= 1.0  # stored unnormalised
    batch = next(iter(pipe.eval_batches("test")))
    n = int(batch["mask"].sum())
    np.testing.assert_array_equal(batch["image"][:n], protocol.normalize(test.images[:n]))
    u8 = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3)).astype(np.uint8)
    np.testing.assert_allclose(protocol.normalize(u8), protocol.normalize(u8 / 255.0),
                               atol=1e-6)
    want = (u8[..., 1] / 255.0 - 0.456) / 0.224  # torchvision's ImageNet statistics (green)
    np.testing.assert_allclose(protocol.normalize(u8)[..., 1], want, atol=1e-5)


def test_in_memory_process_shards_put_together_are_the_global_batches():
    """A multi-host run's processes each make their rows (`shard=`); together: the batches of
    one process, augmentation included (one generator per image, not per batch)."""
    config = tiny_config(**{"data.augment": "trivialaugment", "eval_batch_size": 100})
    ref = loader.create_pipeline(config)
    parts = [loader.create_pipeline(config, shard=(i, 4)) for i in range(4)]
    train = [list(p.train_batches(2, with_val=True)) for p in parts]
    for step, whole in enumerate(ref.train_batches(2, with_val=True)):
        for k in whole:
            assert np.array_equal(np.concatenate([t[step][k] for t in train]), whole[k])
    evals = [list(p.eval_batches("test")) for p in parts]
    for b, whole in enumerate(ref.eval_batches("test")):  # 359 images: the last batch padded
        for k in whole:
            assert np.array_equal(np.concatenate([e[b][k] for e in evals]), whole[k])


def test_digits_are_scikit_learns_without_importing_it():
    digits = load_digits()
    data = np.loadtxt(memory.digits_file(), delimiter=",")
    np.testing.assert_array_equal(data[:, :-1].reshape(-1, 8, 8), digits.images)
    np.testing.assert_array_equal(data[:, -1].astype(int), digits.target)
    images, labels = memory.load_digits_arrays(8)
    np.testing.assert_array_equal(labels, digits.target)
    np.testing.assert_allclose(images[..., 0], digits.images / 16.0, atol=1e-6)
