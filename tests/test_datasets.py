"""The paper datasets, the image folder, the grain pipeline and real-data augmentation.

Every dataset is built from TINY archives made here in the official layouts (same file
names, folders and annotation formats; .mat files via scipy.io.savemat), with a few 12x16
JPEGs per class.
"""
import hashlib
import importlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import scipy.io
from PIL import Image

from configs import cars as cars_config
from mgr_jax.data import datasets, loader, memory, protocol, real_augment, transforms
from mgr_jax.data.grain_pipeline import GrainPipeline
from mgr_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _jpeg(label, i, size=(16, 12)):
    """A tiny JPEG whose grey level encodes the label (noise seeded by (label, i))."""
    rng = np.random.default_rng([label, i])
    grey = (60 * label + 30) % 240  # grey levels survive JPEG's chroma subsampling.
    img = (grey + rng.integers(0, 4, (size[1], size[0], 1)) * np.ones(3, int)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _tar(path, members):
    """Write {member name: bytes} as a tar archive (gzip by the name's suffix)."""
    with tarfile.open(path, "w:gz" if path.endswith("gz") else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _text(lines):
    return ("\n".join(lines) + "\n").encode()


def _annotations(pairs):
    """A Cars-style 1xN annotations struct array of (fname, 1-based class)."""
    dtype = [("bbox_x1", "u1"), ("bbox_y1", "u1"), ("bbox_x2", "u1"), ("bbox_y2", "u1"),
             ("class", "u1"), ("fname", "U16")]
    return np.array([(1, 1, 10, 10, c, f) for f, c in pairs], dtype=dtype).reshape(1, -1)


def _mat_bytes(dictionary):
    buf = io.BytesIO()
    scipy.io.savemat(buf, dictionary)
    return buf.getvalue()


# Labels (0-based) of the tiny official splits: 3 classes, 10 train and 4 test images each.
TRAIN_LABELS = [c for c in range(3) for _ in range(10)]
TEST_LABELS = [c for c in range(3) for _ in range(4)]


def make_cars(d):
    names = [f"Make{i} Model {i} 2012" for i in range(196)]
    train = [(f"{i + 1:05d}.jpg", c + 1) for i, c in enumerate(TRAIN_LABELS)]
    test = [(f"{i + 1:05d}.jpg", c + 1) for i, c in enumerate(TEST_LABELS)]
    _tar(os.path.join(d, "cars_train.tgz"),
         {f"cars_train/{f}": _jpeg(c - 1, i) for i, (f, c) in enumerate(train)})
    _tar(os.path.join(d, "cars_test.tgz"),
         {f"cars_test/{f}": _jpeg(c - 1, 100 + i) for i, (f, c) in enumerate(test)})
    _tar(os.path.join(d, "car_devkit.tgz"), {
        "devkit/README.txt": b"devkit",
        "devkit/cars_meta.mat": _mat_bytes({"class_names": np.array(names, object)[None]}),
        "devkit/cars_train_annos.mat": _mat_bytes({"annotations": _annotations(train)}),
        "devkit/cars_test_annos.mat": _mat_bytes({"annotations": np.array(
            [(f,) for f, _ in test], dtype=[("fname", "U16")]).reshape(1, -1)}),
    })
    scipy.io.savemat(os.path.join(d, "cars_test_annos_withlabels.mat"),
                     {"annotations": _annotations(test)})
    return names[:3]


def make_aircraft(d):
    variants = ["707-320", "A300B4", "Cessna 172"] + [f"Variant {i}" for i in range(97)]
    root = "fgvc-aircraft-2013b/data/"
    members = {root + "variants.txt": _text(variants)}
    listings = {"trainval": [], "test": []}
    for split, labels in (("trainval", TRAIN_LABELS), ("test", TEST_LABELS)):
        for i, c in enumerate(labels):
            image_id = f"{1000000 + 100 * (split == 'test') + i:07d}"
            members[f"{root}images/{image_id}.jpg"] = _jpeg(c, i)
            listings[split].append(f"{image_id} {variants[c]}")
    for split, lines in listings.items():
        members[f"{root}images_variant_{split}.txt"] = _text(lines)
    members[root + "images_variant_train.txt"] = _text(listings["trainval"][::2])
    _tar(os.path.join(d, "fgvc-aircraft-2013b.tar.gz"), members)
    return variants[:3]


def make_birds(d):
    classes = [f"{i + 1:03d}.Bird_{i + 1}" for i in range(200)]
    root = "CUB_200_2011/"
    members, images, labels, split = {}, [], [], []
    for i, (c, is_train) in enumerate([(c, 1) for c in TRAIN_LABELS] +
                                      [(c, 0) for c in TEST_LABELS]):
        path = f"{classes[c]}/{classes[c].split('.')[1]}_{i:04d}.jpg"
        members[f"{root}images/{path}"] = _jpeg(c, i)
        images.append(f"{i + 1} {path}")
        labels.append(f"{i + 1} {c + 1}")
        split.append(f"{i + 1} {is_train}")
    members.update({root + "images.txt": _text(images),
                    root + "image_class_labels.txt": _text(labels),
                    root + "train_test_split.txt": _text(split),
                    root + "classes.txt": _text(f"{i + 1} {c}" for i, c in enumerate(classes)),
                    "attributes.txt": b"1 has_bill_shape::curved\n"})
    _tar(os.path.join(d, "CUB_200_2011.tgz"), members)
    return ["Bird_1", "Bird_2", "Bird_3"]


def make_dtd(d):
    classes = sorted(["banded", "blotchy", "braided"] + [f"texture{i:02d}" for i in range(44)])
    members, lists = {}, {"train1": [], "val1": [], "test1": []}
    for c, name in enumerate(classes):
        for part in lists:
            path = f"{name}/{name}_{part}.jpg"
            members[f"dtd/images/{path}"] = _jpeg(c, len(lists[part]))
            lists[part].append(path)
    for part, lines in lists.items():
        members[f"dtd/labels/{part}.txt"] = _text(lines)
    members["dtd/labels/train2.txt"] = _text(lists["val1"])  # other partitions are ignored.
    _tar(os.path.join(d, "dtd-r1.0.1.tar.gz"), members)
    return classes[:3]


def make_flowers(d):
    labels = TRAIN_LABELS + TEST_LABELS
    _tar(os.path.join(d, "102flowers.tgz"),
         {f"jpg/image_{i + 1:05d}.jpg": _jpeg(c, i) for i, c in enumerate(labels)})
    scipy.io.savemat(os.path.join(d, "imagelabels.mat"),
                     {"labels": np.array(labels, np.uint8)[None] + 1})
    ids = np.arange(1, len(labels) + 1)
    train = ids[:len(TRAIN_LABELS)]
    scipy.io.savemat(os.path.join(d, "setid.mat"), {
        "trnid": train[::2][None].astype(np.uint16), "valid": train[1::2][None].astype(np.uint16),
        "tstid": ids[len(TRAIN_LABELS):][None].astype(np.uint16)})
    return ["class_001", "class_002", "class_003"]


def make_pets(d):
    breeds = ["Abyssinian", "american_bulldog", "Bengal"]
    images, lines = {}, {"trainval": [], "test": []}
    for split, labels, offset in (("trainval", TRAIN_LABELS, 1), ("test", TEST_LABELS, 500)):
        for i, c in enumerate(labels):
            name = f"{breeds[c]}_{offset + i}"
            images[f"images/{name}.jpg"] = _jpeg(c, i)
            lines[split].append(f"{name} {c + 1} {1 + (c == 1)} {c // 2 + 1}")
    images["images/Abyssinian_100.mat"] = b"not an image"  # as in the official archive.
    _tar(os.path.join(d, "images.tar.gz"), images)
    _tar(os.path.join(d, "annotations.tar.gz"), {
        "annotations/trainval.txt": _text(lines["trainval"]),
        "annotations/test.txt": _text(lines["test"]),
        "annotations/list.txt": _text(["#Image CLASS-ID SPECIES BREED ID"] + lines["trainval"]),
    })
    return breeds


MAKERS = {"cars": make_cars, "aircraft": make_aircraft, "birds": make_birds, "dtd": make_dtd,
          "flowers": make_flowers, "pets": make_pets}
NUM_CLASSES = {"cars": 196, "aircraft": 100, "birds": 200, "dtd": 47, "flowers": 102,
               "pets": 37}


def make_config(name, manual_dir, **data):
    config = cars_config.get_config()
    config.data.name = name
    config.data.manual_dir = str(manual_dir)
    config.data.image_size = 24
    config.data.num_workers = 0
    config.data.num_threads = 2
    config.batch_size = 4
    config.eval_batch_size = 8
    config.num_epochs = 2
    for key, value in data.items():
        config.data[key] = value
    return config


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """{dataset: (manual_dir, first three class names)} with every tiny archive made once."""
    out = {}
    for name, make in MAKERS.items():
        d = tmp_path_factory.mktemp(name)
        out[name] = (str(d), make(str(d)))
    return out


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_dataset_from_official_files(archives, name):
    manual_dir, first_classes = archives[name]
    splits = datasets.load_splits(make_config(name, manual_dir))
    if name == "dtd":  # 47 classes, one image per class in each of train1 / val1 / test1.
        expected_train, expected_test = [c for c in range(47) for _ in range(2)], list(range(47))
    else:
        expected_train, expected_test = TRAIN_LABELS, TEST_LABELS
    assert splits.name == name
    assert splits.num_classes == NUM_CLASSES[name]
    assert splits.class_names[:3] == first_classes
    train = splits.train_source.labels[splits.train_indices]
    test = splits.test_source.labels[splits.test_indices]
    assert sorted(train.tolist()) == sorted(expected_train)
    assert sorted(test.tolist()) == sorted(expected_test)
    # Canonical order: sorted keys; each image decodes to the grey its label encodes.
    keys = [splits.train_source.keys[i] for i in splits.train_indices]
    assert keys == sorted(keys)
    i = int(splits.train_indices[0])
    image = np.asarray(transforms.decode(splits.train_source.read(i)))
    assert image.shape == (12, 16, 3)
    label = int(splits.train_source.labels[i])
    if name != "dtd":
        assert abs(image.mean() - (60 * label + 31.5)) < 4
    # A second load reuses the prepared files and the cached index.
    again = datasets.load_splits(make_config(name, manual_dir))
    assert again.train_source.keys == splits.train_source.keys
    assert os.path.exists(os.path.join(manual_dir, "prepared", f"mgr_{name}", "1.0.0",
                                       "mgr_index.json"))


def test_create_pipeline_batches(archives):
    manual_dir, _ = archives["cars"]
    config = make_config("cars", manual_dir)
    pipe = loader.create_pipeline(config)
    assert isinstance(pipe, GrainPipeline) and isinstance(pipe, loader.Pipeline)
    assert (pipe.name, pipe.num_classes, pipe.image_size) == ("cars", 196, 24)
    sizes = pipe.split_sizes()
    assert sizes == {"train": 27, "val": 3, "test": 12}  # 9:1 per class, official test.
    assert pipe.steps_per_epoch == 27 // 4
    batches = list(pipe.train_batches(1, with_val=True))
    assert len(batches) == pipe.steps_per_epoch
    b = batches[0]
    assert b["image"].shape == (4, 24, 24, 3) and b["image"].dtype == np.float32
    assert b["label"].shape == (4,) and b["label"].dtype == np.int32
    assert b["val_image"].shape == (4, 24, 24, 3) and b["val_label"].dtype == np.int32
    # Normalised with the ImageNet statistics: [0, 1] maps into this range.
    lo = (0 - protocol.MEAN_RGB) / protocol.STDDEV_RGB
    hi = (1 - protocol.MEAN_RGB) / protocol.STDDEV_RGB
    assert np.all(b["image"] >= lo - 1e-5) and np.all(b["image"] <= hi + 1e-5)
    assert set(np.concatenate([x["label"] for x in batches]).tolist()) <= {0, 1, 2}
    evals = list(pipe.eval_batches("test"))
    assert len(evals) == 2 and all(e["image"].shape == (8, 24, 24, 3) for e in evals)
    assert evals[1]["mask"].tolist() == [1.0] * 4 + [0.0] * 4
    assert np.all(evals[1]["image"][4:] == 0)
    assert sorted(np.concatenate([e["label"][e["mask"] > 0] for e in evals]).tolist()) == \
        TEST_LABELS
    # The same (seed, epoch) gives the same batches; another epoch another order.
    again = list(pipe.train_batches(1, with_val=True))
    assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(batches, again))
    other = list(pipe.train_batches(2))
    assert not np.array_equal(other[0]["image"], batches[0]["image"])
    # One stream serves consecutive epochs; an epoch left half-read is started afresh.
    fresh = loader.create_pipeline(config)
    first = fresh.train_batches(2)
    next(first)
    first.close()
    assert fresh._stream is None
    assert all(np.array_equal(x["image"], y["image"])
               for x, y in zip(other, fresh.train_batches(2)))
    fresh = loader.create_pipeline(config)
    list(fresh.train_batches(1))
    stream = fresh._stream
    assert stream is not None and stream.next_epoch == 2
    assert all(np.array_equal(x["image"], y["image"])
               for x, y in zip(other, fresh.train_batches(2)))  # zip stops before the end,
    assert fresh._stream is stream and stream.next_epoch == 3  # the stream is kept.
    list(fresh.train_batches(1))  # past its last epoch: a new stream, the old one closed.
    assert stream.iterator is None and fresh._stream.next_epoch == 2
    assert len(list(fresh.train_batches(2))) == fresh.steps_per_epoch
    assert fresh._stream is None  # read to its last epoch: closed.
    # Evaluation is deterministic.
    assert np.array_equal(next(iter(pipe.eval_batches("val")))["image"],
                          next(iter(pipe.eval_batches("val")))["image"])


def test_worker_processes_give_the_same_batches(archives):
    """Batches do not depend on how many workers make them (per-image seeds)."""
    manual_dir, _ = archives["pets"]
    config = make_config("pets", manual_dir, augment="randaugment")
    ref = list(loader.create_pipeline(config).train_batches(1, with_val=True))
    config.data.num_workers = 2
    pipe = loader.create_pipeline(config)
    got = list(pipe.train_batches(1, with_val=True))
    got2 = list(pipe.train_batches(2))  # a new stream: with_val changed.
    assert len(got) == len(ref)
    for x, y in zip(ref, got):
        assert sorted(x) == sorted(y) == ["image", "label", "val_image", "val_label"]
        assert all(np.array_equal(x[k], y[k]) for k in x)
    config.data.num_workers = 0
    ref2 = list(loader.create_pipeline(config).train_batches(2))
    assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(ref2, got2))


def test_process_shards_put_together_are_the_global_batches(archives):
    """Each process of a multi-host run makes only its rows; together they are the batches of
    one process (training with D_val and augmentation, and every evaluation split)."""
    manual_dir, _ = archives["pets"]
    config = make_config("pets", manual_dir, augment="randaugment")
    ref = loader.create_pipeline(config)
    parts = [loader.create_pipeline(config, shard=(i, 2)) for i in range(2)]
    train = [list(p.train_batches(1, with_val=True)) for p in parts]
    for step, whole in enumerate(ref.train_batches(1, with_val=True)):
        for k in whole:
            assert train[0][step][k].shape[0] == whole[k].shape[0] // 2
            assert np.array_equal(np.concatenate([t[step][k] for t in train]), whole[k])
    for split in ("train", "val", "test"):
        evals = [list(p.eval_batches(split)) for p in parts]
        for b, whole in enumerate(ref.eval_batches(split)):
            for k in whole:
                assert np.array_equal(np.concatenate([e[b][k] for e in evals]), whole[k])
    with pytest.raises(ValueError, match="does not split"):
        loader.create_pipeline(config, shard=(0, 3))


def _image_folder(root, counts, size=(20, 14)):
    for c, n in enumerate(counts):
        os.makedirs(os.path.join(root, f"class_{c}"), exist_ok=True)
        for i in range(n):
            with open(os.path.join(root, f"class_{c}", f"img_{i:03d}.jpg"), "wb") as f:
                f.write(_jpeg(c, i, size))


# The split of a 3 x 20 image folder with split_seed 0, pinned: the same on every machine
# and numpy version (it uses only PCG64 permutations of the sorted file list).
EXPECTED_VAL = ["class_0/img_003.jpg", "class_0/img_014.jpg", "class_1/img_002.jpg",
                "class_1/img_014.jpg", "class_2/img_002.jpg", "class_2/img_016.jpg"]
# sha256 of the newline-joined D keys.
EXPECTED_D_SHA256 = "ee0d865a185cd1f08560f0c37827e230af2586c42aa517c54e32974d89b6b3ff"


def _val_keys(root, **data):
    pipe = loader.create_pipeline(make_config("imagefolder", root, **data))
    return pipe, pipe.split_keys("val")


def test_imagefolder_splits_are_fixed(tmp_path):
    root = str(tmp_path / "folder")
    _image_folder(root, [20, 20, 20])
    pipe, val_keys = _val_keys(root)
    assert pipe.num_classes == 3 and pipe.class_names == ["class_0", "class_1", "class_2"]
    # test 20 % per class (4), then D / D_val = 9:1 of the 16 left (round(1.6) = 2 per class).
    assert pipe.split_sizes() == {"train": 42, "val": 6, "test": 12}
    train, test = set(pipe.split_keys("train")), set(pipe.split_keys("test"))
    assert not (train & test) and not (train & set(val_keys)) and not (test & set(val_keys))
    assert val_keys == EXPECTED_VAL
    digest = hashlib.sha256("\n".join(pipe.split_keys("train")).encode()).hexdigest()
    assert digest == EXPECTED_D_SHA256, digest
    # The same seed in a fresh interpreter gives the same split.
    code = ("import sys, json; sys.path.insert(0, sys.argv[2]); "
            "from tests.test_datasets import _val_keys; "
            "print(json.dumps(_val_keys(sys.argv[1])[1]))")
    out = subprocess.run([sys.executable, "-c", code, root, ROOT], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == val_keys
    # Another split seed gives another split; subsets keep that fraction of D per class.
    assert _val_keys(root, split_seed=1)[1] != val_keys
    for fraction, per_class in ((0.5, 7), (0.25, 4), (0.1, 1)):
        sub, sub_val = _val_keys(root, subset_fraction=fraction)
        assert sub.split_sizes() == {"train": 3 * per_class, "val": 6, "test": 12}
        assert sub_val == val_keys and set(sub.split_keys("train")) <= train


def test_imagefolder_train_test_folders(tmp_path):
    _image_folder(str(tmp_path / "train"), [5, 6])
    _image_folder(str(tmp_path / "test"), [2, 1])
    pipe = loader.create_pipeline(make_config("imagefolder", tmp_path))
    assert pipe.split_sizes()["test"] == 3 and pipe.num_classes == 2
    assert pipe.split_sizes()["train"] + pipe.split_sizes()["val"] == 11


def builder_cls(name):
    return importlib.import_module(f"mgr_jax.data.datasets.{name}").BUILDER


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_missing_file_fails_fast(tmp_path, name):
    manual_dir = tmp_path / "empty"
    manual_dir.mkdir()
    start = time.time()
    with pytest.raises(UserError) as e:
        datasets.load_splits(make_config(name, manual_dir))
    assert time.time() - start < 5
    message = str(e.value)
    assert "\n" not in message and "data.manual_dir" in message
    assert os.path.join(str(manual_dir), builder_cls(name).FILES[0]) in message
    assert os.listdir(manual_dir) == []  # nothing is created before the files check out.


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_corrupt_file_fails_fast(archives, tmp_path, name):
    src, _ = archives[name]
    bad = builder_cls(name).FILES[-1]
    for f in builder_cls(name).FILES:
        with open(os.path.join(src, f), "rb") as fin, open(tmp_path / f, "wb") as fout:
            data = fin.read()
            fout.write(b"\x1f\x8b garbage" * 10 if f == bad else data)
    start = time.time()
    with pytest.raises(UserError) as e:
        datasets.load_splits(make_config(name, tmp_path))
    assert time.time() - start < 5
    message = str(e.value)
    assert "\n" not in message and str(tmp_path / bad) in message and "data.manual_dir" in message


def test_truncated_archive_and_missing_images(archives, tmp_path):
    src, _ = archives["birds"]
    with open(os.path.join(src, "CUB_200_2011.tgz"), "rb") as f:
        data = f.read()
    with open(tmp_path / "CUB_200_2011.tgz", "wb") as f:
        f.write(data[:len(data) * 2 // 3])
    with pytest.raises(UserError, match="CUB_200_2011.tgz"):
        datasets.load_splits(make_config("birds", tmp_path))
    assert not os.path.exists(tmp_path / "prepared" / "mgr_birds" / "1.0.0" / "mgr_index.json")
    # Annotations that list an image the archive lacks: the images archive is named.
    pets = tmp_path / "pets"
    pets.mkdir()
    src, _ = archives["pets"]
    with open(os.path.join(src, "images.tar.gz"), "rb") as f, open(pets / "images.tar.gz",
                                                                   "wb") as out:
        out.write(f.read())
    with tarfile.open(os.path.join(src, "annotations.tar.gz")) as tar:
        test_lines = tar.extractfile("annotations/test.txt").read()
        trainval = tar.extractfile("annotations/trainval.txt").read()
    _tar(str(pets / "annotations.tar.gz"), {
        "annotations/trainval.txt": trainval + b"Bengal_999 3 1 2\n",
        "annotations/test.txt": test_lines})
    with pytest.raises(UserError, match=r"images.tar.gz .*holds 30 of the 31 images"):
        datasets.load_splits(make_config("pets", pets))


def test_unknown_dataset_and_bad_fields(tmp_path):
    with pytest.raises(UserError, match="not a known dataset"):
        loader.create_pipeline(make_config("imagenet", tmp_path))
    with pytest.raises(UserError, match="num_workers"):
        loader.create_pipeline(make_config("imagefolder", tmp_path, num_workers=-1))
    with pytest.raises(UserError, match="not a folder"):
        loader.create_pipeline(make_config("imagefolder", tmp_path / "nothing"))


# ---------------------------------------------------------------------------- transforms


def test_train_and_eval_transforms():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (375, 500, 3), np.uint8))
    a = transforms.train_transform(image, 224, np.random.default_rng(3))
    b = transforms.train_transform(image, 224, np.random.default_rng(3))
    assert a.size == (224, 224) and np.array_equal(np.asarray(a), np.asarray(b))
    boxes = [transforms.random_resized_crop_box(500, 375, np.random.default_rng(s))
             for s in range(200)]
    for left, top, w, h in boxes:
        assert 0 <= left and left + w <= 500 and 0 <= top and top + h <= 375
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02 or (w, h) == (500, 375)
    areas = np.array([w * h for _, _, w, h in boxes]) / (500 * 375)
    assert areas.min() >= 0.07 and areas.max() <= 1.0 and areas.std() > 0.1
    # Eval = torchvision's Resize(256) + CenterCrop(224), done as one resample.
    e = transforms.eval_transform(image, 224)
    ref = image.resize((341, 256), Image.BILINEAR).crop((58, 16, 282, 240))
    assert np.abs(np.asarray(e, int) - np.asarray(ref, int)).max() <= 1


# -------------------------------------------------------------------------- augmentation


def _photo(size=(40, 32)):
    rng = np.random.default_rng(1)
    x = np.linspace(0, 255, size[0])[None, :, None] * np.ones((size[1], 1, 3))
    return Image.fromarray(np.clip(x + rng.integers(0, 40, x.shape), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("name", list(real_augment.OPS))
def test_op_shape_dtype_and_identity_at_zero(name):
    image = _photo()
    for m in (0.0, 0.3, -0.3, 5.0):
        magnitude = {"Posterize": 4, "Solarize": 128.0}.get(name, m)
        out = real_augment.apply_op(image, name, magnitude)
        arr = np.asarray(out)
        assert arr.shape == (32, 40, 3) and arr.dtype == np.uint8
    zero = {"Posterize": 8, "Solarize": 256.0}.get(name, 0.0)
    if name not in ("AutoContrast", "Equalize"):
        assert np.array_equal(np.asarray(real_augment.apply_op(image, name, zero)),
                              np.asarray(image)), name


def test_ops_move_pixels_as_defined():
    image = _photo()
    arr = np.asarray(image)
    shifted = np.asarray(real_augment.translate_x(image, 5.0))
    assert np.array_equal(shifted[:, 5:], arr[:, :-5]) and np.all(shifted[:, :5] == 0)
    sheared = np.asarray(real_augment.shear_x(image, 0.5))
    assert np.array_equal(sheared[10, :30], arr[10, 5:35])  # x_in = x + 0.5 y
    assert np.array_equal(np.asarray(real_augment.posterize(image, 2)), arr & 0b11000000)
    sol = np.asarray(real_augment.solarize(image, 100.0))
    assert np.array_equal(sol, np.where(arr >= 100, 255 - arr, arr))


def test_magnitude_tables_match_torchvision():
    ra = real_augment.randaugment_space(31, 224, 224)
    assert ra["ShearX"][0][9] == pytest.approx(0.09)
    assert ra["TranslateX"][0][9] == pytest.approx(150 / 331 * 224 * 9 / 30)
    assert ra["Rotate"][0][9] == pytest.approx(9.0)
    assert ra["Posterize"][0][9] == 7 and ra["Solarize"][0][9] == pytest.approx(178.5)
    ta = real_augment.trivialaugment_space(31)
    assert ta["Posterize"][0].tolist()[0::10] == [8, 6, 4, 2] and ta["Rotate"][0][-1] == 135
    am = real_augment.augmix_space(10, 224, 224)
    assert am["Posterize"][0][:3].tolist() == [4, 4, 3] and len(am) == 13


@pytest.mark.parametrize("name", ["randaugment", "trivialaugment", "augmix"])
def test_policies_are_seeded(name):
    fn = real_augment.get(name)
    image = _photo()
    outs = [np.asarray(fn(image, np.random.default_rng(s))) for s in (0, 0, 1, 2, 3)]
    assert all(o.shape == (32, 40, 3) and o.dtype == np.uint8 for o in outs)
    assert np.array_equal(outs[0], outs[1])
    assert any(not np.array_equal(outs[0], o) for o in outs[2:])


def test_array_augment_hook_on_digits():
    images01, _ = memory.load_digits_arrays(16)
    images = images01[:8]
    assert real_augment.array_augment_fn("none") is None
    fn = real_augment.array_augment_fn("trivialaugment")
    rngs = lambda: [np.random.default_rng([0, k]) for k in range(len(images))]  # noqa: E731
    a, b = fn(images, rngs()), fn(images, rngs())
    assert a.shape == images.shape and a.dtype == np.float32 and np.array_equal(a, b)
    # image k depends on its own generator only: a part of the batch augments the same
    assert np.array_equal(fn(images[3:6], rngs()[3:6]), a[3:6])
    config = make_config("digits", "")
    config.data.image_size, config.data.augment = 16, "randaugment"
    pipe = loader.create_pipeline(config)
    batch = next(iter(pipe.train_batches(1)))
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.float32
    with pytest.raises(ValueError):
        real_augment.get("cutmix")
