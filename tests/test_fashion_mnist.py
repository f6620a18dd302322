"""Fashion-MNIST read from idx files written here: values, class subsets, the protocol's splits,
and each refusal of a damaged file. The real files are read too when they are installed."""
import gzip
import os
import struct
import time

import jax
import numpy as np
import pytest

from configs import fashion_mnist as fashion_config
from configs import fashion_transfer as transfer_config
from mgr_jax import variables_io
from mgr_jax.data import datasets, loader, protocol, transforms
from mgr_jax.data.datasets import fashion_mnist
from mgr_jax.data.grain_pipeline import GrainPipeline
from mgr_jax.errors import UserError
from mgr_jax.generators import stylegan2_ada
from mgr_jax.run import config_lib, train

TRAIN_IMAGES, TRAIN_LABELS = fashion_mnist.FILES["train"][:2]
TEST_IMAGES, TEST_LABELS = fashion_mnist.FILES["test"][:2]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_DIR = os.environ.get("MGR_JAX_FASHION_MNIST", fashion_mnist.APT_DIR)


def _idx(array, magic=None, dims=None):
    """The idx encoding of a uint8 array: magic (default: unsigned bytes, array.ndim dims),
    the dims (default: the array's shape) as big-endian uint32, then the bytes."""
    array = np.asarray(array, np.uint8)
    dims = array.shape if dims is None else dims
    magic = 0x0800 | array.ndim if magic is None else magic
    return struct.pack(f">{1 + len(dims)}I", magic, *dims) + array.tobytes()


def _write(folder, name, raw, compress=True):
    (folder / name).write_bytes(gzip.compress(raw) if compress else raw)


def _make(folder, train_per_class=10, test_per_class=3, seed=0):
    """Write the four official files (random pixels, shuffled labels); return the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        images_name, labels_name, _ = fashion_mnist.FILES[split]
        _write(folder, images_name, _idx(images))
        _write(folder, labels_name, _idx(labels))
        arrays[split] = (images, labels)
    return arrays


def _config(manual_dir, **data):
    config = fashion_config.get_config()
    config.data.manual_dir = str(manual_dir)
    config.data.val_fraction = 0.2
    config.data.subset_fraction = 0.5
    config.batch_size = 8
    config.eval_batch_size = 16
    for key, value in data.items():
        config.data[key] = value
    return config


def test_reads_back_exactly_what_was_written(tmp_path):
    arrays = _make(tmp_path)
    splits = datasets.load_splits(_config(tmp_path))
    assert splits.name == "fashion_mnist" and splits.num_classes == 10
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[9] == "Ankle boot"
    for source, indices, (images, labels) in (
            (splits.train_source, splits.train_indices, arrays["train"]),
            (splits.test_source, splits.test_indices, arrays["test"])):
        np.testing.assert_array_equal(source.images[indices], images)
        np.testing.assert_array_equal(source.labels[indices], labels)
        assert source.labels.dtype == np.int32
    # The grain pipeline's access (encoded bytes, PIL): the same pixels in each RGB channel.
    decoded = np.asarray(transforms.decode(splits.test_source.read(4), "test/00004"))
    np.testing.assert_array_equal(decoded, np.repeat(arrays["test"][0][4][..., None], 3, -1))
    assert splits.test_source.describe(4) == "test/00004"


def test_class_subset_keeps_and_renumbers_in_the_order_given(tmp_path):
    arrays = _make(tmp_path)
    splits = datasets.load_splits(_config(tmp_path, classes=(7, 2, 9)))
    assert splits.class_names == ["Sneaker", "Pullover", "Ankle boot"]
    for source, (images, labels) in ((splits.train_source, arrays["train"]),
                                     (splits.test_source, arrays["test"])):
        kept = np.flatnonzero(np.isin(labels, (7, 2, 9)))  # in the files' order
        np.testing.assert_array_equal(source.images, images[kept])
        np.testing.assert_array_equal(source.labels, [{7: 0, 2: 1, 9: 2}[c] for c in labels[kept]])
    assert len(splits.test_source) == 9  # every test image of the three classes


def test_pipeline_draws_the_protocol_splits(tmp_path):
    """10 train images a class: D_val 20 % (2 a class), D the other 8, then half of D (4 a
    class); test: the 3 official test images a class. Classes 5-9 become 0-4. The D / D_val
    images are those the grain pipeline would draw for the same split_seed."""
    arrays = _make(tmp_path)
    config = _config(tmp_path, classes=(5, 6, 7, 8, 9))
    pipeline = loader.create_pipeline(config)
    assert isinstance(pipeline, loader.Pipeline)
    assert (pipeline.name, pipeline.num_classes, pipeline.image_size) == ("fashion_mnist", 5, 28)
    assert pipeline.class_names == ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert pipeline.split_sizes() == {"train": 20, "val": 10, "test": 15}
    for split, per_class in (("train", 4), ("val", 2), ("test", 3)):
        np.testing.assert_array_equal(np.bincount(pipeline.splits[split].labels), [per_class] * 5)
    splits = datasets.load_splits(config)
    grain = GrainPipeline.from_config(splits, config)
    for split, idx in (("train", grain.d_idx), ("val", grain.val_idx)):
        np.testing.assert_array_equal(pipeline.splits[split].images[..., 0],
                                      splits.train_source.images[idx] / np.float32(255.0))
    # Evaluation batches: the test images in the files' order, grey as RGB, normalised.
    test_images, test_labels = arrays["test"]
    kept = np.flatnonzero(test_labels >= 5)
    batch = next(pipeline.eval_batches("test"))
    want = (test_images[kept][..., None] / 255.0 - protocol.MEAN_RGB) / protocol.STDDEV_RGB
    np.testing.assert_allclose(batch["image"][:15], want, atol=1e-5)  # float32 rounding
    np.testing.assert_array_equal(batch["label"][:15], test_labels[kept] - 5)
    assert batch["mask"].tolist() == [1.0] * 15 + [0.0]
    train = next(pipeline.train_batches(0, with_val=True))
    assert train["image"].shape == train["val_image"].shape == (8, 28, 28, 3)
    assert set(train["label"].tolist()) <= set(range(5))


def test_other_image_sizes_are_resampled(tmp_path):
    """A constant image stays constant under bilinear resampling; channels stay equal."""
    images = np.full((2, 28, 28), 51, np.uint8)
    out = fashion_mnist.rgb01(images, 32)
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.2, atol=1e-6)
    np.testing.assert_array_equal(fashion_mnist.rgb01(images, 28)[0, :, :, 2], 0.2 * np.ones(
        (28, 28), np.float32))


def _one_line(error, path):
    message = str(error.value)
    assert "\n" not in message and path in message, message
    return message


def test_missing_file_says_which_and_where(tmp_path):
    _make(tmp_path)
    os.remove(tmp_path / TEST_LABELS)
    with pytest.raises(UserError) as error:
        datasets.load_splits(_config(tmp_path))
    message = _one_line(error, str(tmp_path / TEST_LABELS))
    assert message.startswith(f"fashion_mnist: {tmp_path / TEST_LABELS} not found; put the "
                              f"official file {TEST_LABELS} in data.manual_dir (now "
                              f"'{tmp_path}'; see docs/datasets.md)")
    assert "apt-get install dataset-fashion-mnist" in message
    with pytest.raises(UserError, match="data.manual_dir is empty; set it to the folder"):
        datasets.load_splits(_config(""))


def _flip_crc(raw):
    data = bytearray(gzip.compress(raw))
    data[-8] ^= 0xFF  # the trailer's CRC32
    return bytes(data)


IMAGES3 = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
HOSTILE = {  # case: (file, its bytes as written, what the message says)
    "images magic": (TRAIN_IMAGES, gzip.compress(_idx(IMAGES3, magic=0x801)),
                     "its idx magic number is 0x00000801, not 0x00000803"),
    "labels magic": (TRAIN_LABELS, gzip.compress(_idx([1, 2], magic=0x803)),
                     "magic number is 0x00000803, not 0x00000801"),
    "signed bytes": (TRAIN_IMAGES, gzip.compress(_idx(IMAGES3, magic=0x903)),
                     "magic number is 0x00000903"),
    "image size": (TRAIN_IMAGES, gzip.compress(_idx(np.zeros((2, 27, 28)))),
                   "its images are 27x28, not 28x28"),
    "no images": (TRAIN_IMAGES, gzip.compress(_idx(np.zeros((0, 28, 28)))),
                  "its header declares 0 images"),
    "more than official": (TEST_IMAGES, gzip.compress(_idx([], magic=0x803,
                                                           dims=(10_001, 28, 28))),
                           "declares 10,001 images; the official file has 10,000"),
    "payload short": (TRAIN_IMAGES, gzip.compress(_idx(IMAGES3)[:-1]),
                      "it holds 2,351 bytes after its header, which declares 3 images "
                      "(2,352 bytes)"),
    "payload long": (TRAIN_IMAGES, gzip.compress(_idx(IMAGES3) + b"\0"),
                     "it holds 2,353 bytes after its header"),
    "header cut": (TRAIN_LABELS, gzip.compress(b"\0\0\x08"),
                   "it decompresses to 3 bytes, fewer than the 8-byte idx header of labels"),
    "label 10": (TRAIN_LABELS, gzip.compress(_idx([0, 3, 9, 1, 10, 2])),
                 "label 10 at position 4 is outside 0..9"),
    "not gzip": (TRAIN_LABELS, _idx([1, 2]), "not a well-formed gzip file: BadGzipFile"),
    "gzip cut": (TRAIN_IMAGES, gzip.compress(_idx(IMAGES3))[:-12],
                 "not a well-formed gzip file: EOFError"),
    "gzip crc": (TRAIN_IMAGES, _flip_crc(_idx(IMAGES3)), "CRC check failed"),
    "bomb": (TEST_LABELS, gzip.compress(_idx([1]) + bytes(8 << 20)),  # 8 kB in the file
             "expands past 10,008 bytes (a decompression bomb?)"),
    "file too large": (TEST_LABELS, np.random.default_rng(0).bytes(100_000),
                       "it is 100,000 bytes, more than the 75,644 that the official file's "
                       "gzip stream can take"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_damaged_files_are_refused_in_one_line(tmp_path, case):
    _make(tmp_path)
    name, data, needle = HOSTILE[case]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(UserError) as error:
        datasets.load_splits(_config(tmp_path))
    message = _one_line(error, str(tmp_path / name))
    assert message.startswith(f"fashion_mnist: {tmp_path / name} is damaged or not the "
                              "official file (") and needle in message, message
    assert message.endswith(f"download it again into data.manual_dir (now '{tmp_path}'; see "
                            "docs/datasets.md)")


def test_images_and_labels_that_disagree_in_count(tmp_path):
    _make(tmp_path)
    _write(tmp_path, TEST_LABELS, _idx(np.zeros(29)))  # 30 test images
    with pytest.raises(UserError) as error:
        datasets.load_splits(_config(tmp_path))
    message = _one_line(error, str(tmp_path / TEST_IMAGES))
    assert f"holds 30 images but {tmp_path / TEST_LABELS} 29 labels" in message


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_fifo_or_a_folder_in_place_of_a_file(tmp_path, kind):
    _make(tmp_path)
    os.remove(tmp_path / TRAIN_IMAGES)
    if kind == "fifo":
        os.mkfifo(tmp_path / TRAIN_IMAGES)  # opening it for reading would block
    else:
        os.mkdir(tmp_path / TRAIN_IMAGES)
    with pytest.raises(UserError) as error:
        datasets.load_splits(_config(tmp_path))
    what = "a FIFO (named pipe)" if kind == "fifo" else "a directory"
    assert f"{tmp_path / TRAIN_IMAGES} is {what}, not the official file" in _one_line(
        error, str(tmp_path / TRAIN_IMAGES))


def test_config_checks_the_class_subset():
    config = fashion_config.get_config()
    config_lib.validate(config)
    config.data.classes = (5, 6, 7, 8, 9)
    config_lib.validate(config)
    for bad in ((5, 5), (3,), (0, 10), (-1, 2)):
        config.data.classes = bad
        with pytest.raises(UserError, match=r"must be at least two distinct class indices in "
                                            r"0\.\.9"):
            config_lib.validate(config)
    config.data.classes = (1, 2)
    config.data.name = "digits"
    with pytest.raises(UserError, match="data.name='digits' uses all of its classes"):
        config_lib.validate(config)


@pytest.mark.skipif(not os.path.isdir(REAL_DIR), reason=f"no Fashion-MNIST in {REAL_DIR}")
def test_the_official_files_when_installed():
    """Known facts of the release: 60,000 / 10,000 images, 6,000 / 1,000 a class, the first
    training image an ankle boot, mean pixel 0.2860 (the normalisation commonly used)."""
    start = time.perf_counter()
    images, labels = fashion_mnist.read_split(REAL_DIR, "train")
    seconds = time.perf_counter() - start
    assert images.shape == (60_000, 28, 28) and labels[0] == 9
    np.testing.assert_array_equal(np.bincount(labels), [6_000] * 10)
    assert np.mean(images) / 255.0 == pytest.approx(0.2860, abs=5e-5)
    test_images, test_labels = fashion_mnist.read_split(REAL_DIR, "test")
    assert test_images.shape == (10_000, 28, 28)
    np.testing.assert_array_equal(np.bincount(test_labels), [1_000] * 10)
    assert seconds < 30, f"reading the training files took {seconds:.1f} s"
    config = fashion_config.get_config()
    config.data.manual_dir = REAL_DIR
    config.data.classes = (5, 6, 7, 8, 9)
    pipeline = loader.create_pipeline(config)
    assert pipeline.split_sizes() == {"train": 27_000, "val": 3_000, "test": 5_000}


def _flat(tree):
    return {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_the_committed_transfer_setting_starts_from_its_weights(tmp_path):
    """configs/fashion_transfer.py on test-made files: the classifier starts from the committed
    upstream backbone (classes 0-4) with a fresh 5-way head, and the committed generator draws
    16x16 images of the 5 downstream classes (README, "Does MPS help here?", setting A)."""
    _make(tmp_path)
    config = transfer_config.get_config()
    config.data.manual_dir = str(tmp_path)
    config.model.init_checkpoint = os.path.join(ROOT, config.model.init_checkpoint)
    config.generator.checkpoint = os.path.join(ROOT, config.generator.checkpoint)
    config_lib.validate(config)
    start = train.setup(config)
    assert start.pipeline.num_classes == 5
    upstream, meta = variables_io.load_variables(config.model.init_checkpoint)
    assert meta["classes"] == [0, 1, 2, 3, 4] and meta["image_size"] == 16
    want = _flat(upstream)
    got = _flat({"params": start.state.params, "batch_stats": start.state.batch_stats})
    assert want.keys() == got.keys()
    for k in want:
        if "/fc/" in k:  # same shape (5 classes upstream too), but the downstream's own draw
            assert got[k].shape == want[k].shape and not np.array_equal(got[k], want[k]), k
        else:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    gen = stylegan2_ada.load(config.generator.checkpoint)
    assert (gen.num_classes, gen.resolution) == (5, 16)
    z = jax.random.normal(jax.random.key(0), (1,) + gen.latent_shape)
    images = np.asarray(gen.sample(gen.params, np.repeat(z, 5, axis=0), np.arange(5)))
    assert images.shape == (5, 16, 16, 3) and np.all(np.isfinite(images))
    # one latent, five classes: five different images (the class conditions the generator)
    assert min(np.abs(images[i] - images[j]).max() for i in range(5) for j in range(i)) > 0.1
