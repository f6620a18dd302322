"""The paper's six datasets, Fashion-MNIST and a user's image folder, from their official files.

    config.data.name     files expected in config.data.manual_dir (docs/datasets.md)
    cars                 cars_train.tgz, cars_test.tgz, car_devkit.tgz,
                         cars_test_annos_withlabels.mat
    aircraft             fgvc-aircraft-2013b.tar.gz
    birds                CUB_200_2011.tgz
    dtd                  dtd-r1.0.1.tar.gz
    flowers              102flowers.tgz, imagelabels.mat, setid.mat
    pets                 images.tar.gz, annotations.tar.gz
    imagefolder          <class name>/*.jpg|png (or train/<class>/..., test/<class>/...)
    fashion_mnist        train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
                         t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz

The archives are prepared once into tfds array_record files (`data.prepared_dir`), then read
through `mgr_jax.data.grain_pipeline.GrainPipeline`; fashion_mnist is read whole into memory
each run and served by `memory.ArrayPipeline` (`loader.create_pipeline` picks). Each dataset
module has `load(config) -> archives.DatasetSplits`; importing this package is cheap (no
tfds): the dataset modules load on demand.
"""
import importlib

import numpy as np

from mgr_jax.data import protocol
from mgr_jax.errors import UserError

ARCHIVE_DATASETS = ("cars", "aircraft", "birds", "dtd", "flowers", "pets")
NAMES = ARCHIVE_DATASETS + ("imagefolder", "fashion_mnist")
# The datasets whose classes `data.classes` may choose from, and how many classes they have
# (their modules' NUM_CLASSES, written here so that checking a config imports no dataset).
CLASS_COUNTS = {"fashion_mnist": 10}


def check_classes(name, classes):
    """UserError unless `classes` (data.classes) is empty (all classes) or at least two distinct
    class indices of dataset `name`."""
    if not classes:
        return
    shown = f"data.classes={tuple(classes)}"
    if name not in CLASS_COUNTS:
        raise UserError(f"{shown}: data.name={name!r} uses all of its classes (only "
                        f"{list(CLASS_COUNTS)} keep a subset); set data.classes=()")
    count = CLASS_COUNTS[name]
    if len(classes) < 2 or len(set(classes)) != len(classes) or \
            not all(0 <= c < count for c in classes):
        raise UserError(f"{shown} must be at least two distinct class indices in "
                        f"0..{count - 1} (the classes of {name}; () keeps them all)")


def load_splits(config):
    """The official train/test images of `config.data.name` (`archives.DatasetSplits`)."""
    name = config.data.name
    if name not in NAMES:
        raise UserError(f"data.name={name!r} is not a known dataset; choose one of "
                        f"{['digits', *NAMES]}")
    check_classes(name, tuple(config.data.get("classes", ())))
    splits = importlib.import_module(f"mgr_jax.data.datasets.{name}").load(config)
    check_split_sizes(splits, config.data)
    return splits


def _part_sizes(n, data, drawn_test):
    """(test, D, D_val) sizes of one class of n images under the protocol's splits."""
    labels = np.zeros(n, np.int64)
    test = 0
    if drawn_test:
        kept, held = protocol.stratified_split(labels, data.test_fraction, data.split_seed)
        labels, test = labels[kept], len(held)
    d, val = protocol.protocol_splits(labels, val_fraction=data.val_fraction,
                                      subset_fraction=data.subset_fraction, seed=data.split_seed)
    return test, len(d), len(val)


def _images_needed(data, drawn_test):
    """The fewest images a class needs to have one in each split (None above 10,000)."""
    for n in range(1, 10_001):
        test, d, val = _part_sizes(n, data, drawn_test)
        if d >= 1 and val >= 1 and (test >= 1 or not drawn_test):
            return n
    return None


def check_split_sizes(splits, data):
    """UserError, with the numbers, when a class has too few images for the splits.

    Every class with training images needs at least one of them in D and one in D_val (and
    one in the test split when that is drawn from the same images), or a class is never seen
    or never evaluated, and with every class short, validation divides by zero. (A class that
    the official annotations name but give no training image is left as it is.)
    """
    labels = np.asarray(splits.train_source.labels)[np.asarray(splits.train_indices)]
    d_local, val_local = protocol.protocol_splits(
        labels, val_fraction=data.val_fraction, subset_fraction=data.subset_fraction,
        seed=data.split_seed)
    k = splits.num_classes
    d_counts = np.bincount(labels[d_local], minlength=k)
    val_counts = np.bincount(labels[val_local], minlength=k)
    drawn_test = splits.train_source is splits.test_source
    train_counts = np.bincount(labels, minlength=k)
    for c in range(k):
        if (d_counts[c] and val_counts[c]) or not train_counts[c]:
            continue
        name, need = splits.class_names[c], _images_needed(data, drawn_test)
        train_total = int(train_counts[c])
        if drawn_test:
            test_labels = np.asarray(splits.test_source.labels)[np.asarray(splits.test_indices)]
            test = int(np.sum(test_labels == c))
            given = (f"{train_total + test} images: {test} for the test split "
                     f"(data.test_fraction={data.test_fraction}), ")
        else:
            given = f"{train_total} images in the official training split: "
        raise UserError(f"{splits.name}: class {name!r} has {given}{int(d_counts[c])} for D and "
                        f"{int(val_counts[c])} for D_val (data.val_fraction={data.val_fraction},"
                        f" data.subset_fraction={data.subset_fraction}); each class needs at "
                        f"least {need} images{' there' if not drawn_test else ''} to have one "
                        "in each split: add images to it or remove it")
    if len(val_local) == 0 or len(splits.test_indices) == 0:
        empty = "D_val" if len(val_local) == 0 else "the test split"
        raise UserError(f"{splits.name}: {empty} is empty; add images (data.val_fraction="
                        f"{data.val_fraction}, data.test_fraction={data.test_fraction})")


def validate(data):
    """UserError for data fields the image-dataset pipeline cannot use."""
    checks = (
        (data.num_workers >= 0, f"data.num_workers={data.num_workers} must be >= 0 (0 = decode "
                                "in the main process)"),
        (data.num_threads >= 0, f"data.num_threads={data.num_threads} must be >= 0 (0 = one "
                                "per core)"),
        (data.prefetch_batches >= 1, f"data.prefetch_batches={data.prefetch_batches} must be "
                                     ">= 1"),
        (0 < data.eval_crop_fraction <= 1, f"data.eval_crop_fraction={data.eval_crop_fraction}"
                                           " must be in (0, 1]"),
    )
    for ok, message in checks:
        if not ok:
            raise UserError(message)
