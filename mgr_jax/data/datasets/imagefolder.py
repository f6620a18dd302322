"""A user's own labelled images: one folder per class, read straight from disk.

    data.manual_dir/<class name>/**/*.jpg|png|...          (test split drawn by a fixed seed)
    data.manual_dir/train/<class name>/...  and  data.manual_dir/test/<class name>/...

Classes are the sub-folders holding at least one image, in sorted order (label = position).
Without train/ and test/, `data.test_fraction` of each class (by `data.split_seed`) is the
test split. No preparing step: the files are random-access already.
"""
import os

import numpy as np

from mgr_jax.data import archives
from mgr_jax.data.protocol import stratified_split
from mgr_jax.errors import UserError


def _class_images(root):
    """{class name: sorted image paths relative to root} for root's sub-folders."""
    classes = {}
    for entry in sorted(os.listdir(root)):
        class_dir = os.path.join(root, entry)
        if entry.startswith(".") or not os.path.isdir(class_dir):
            continue
        paths = []
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            paths += [os.path.relpath(os.path.join(dirpath, f), root) for f in filenames
                      if not f.startswith(".") and f.lower().endswith(archives.IMAGE_EXTENSIONS)]
        if paths:
            classes[entry] = sorted(paths)
    return classes


def _source(root, classes, class_names):
    label_of = {c: i for i, c in enumerate(class_names)}
    paths, labels = [], []
    for name, files in classes.items():
        paths += files
        labels += [label_of[name]] * len(files)
    order = archives.canonical_order(paths)
    return archives.FileSource(root, [paths[i] for i in order], np.asarray(labels)[order])


def load(config):
    data = config.data
    root = data.manual_dir
    if not root or not os.path.isdir(root):
        raise UserError(f"imagefolder: data.manual_dir={root!r} is not a folder; point it at a "
                        "folder with one sub-folder of images per class (see "
                        f"{archives.DOCS})")
    has_train = os.path.isdir(os.path.join(root, "train"))
    has_test = os.path.isdir(os.path.join(root, "test"))
    if has_train != has_test:
        raise UserError(f"imagefolder: {root} has a {'train' if has_train else 'test'}/ folder "
                        f"but no {'test' if has_train else 'train'}/ folder; give both (official "
                        "split) or neither (one folder per class)")
    if has_train:
        train_classes = _class_images(os.path.join(root, "train"))
        test_classes = _class_images(os.path.join(root, "test"))
        class_names = sorted(train_classes)
        unknown = sorted(set(test_classes) - set(train_classes))
        if unknown:
            raise UserError(f"imagefolder: {root}/test has classes that train/ lacks: "
                            f"{unknown[:3]}")
        if not test_classes:
            raise UserError(f"imagefolder: {root}/test holds no images")
    else:
        train_classes = _class_images(root)
        class_names = sorted(train_classes)
    if len(class_names) < 2:
        raise UserError(f"imagefolder: found {len(class_names)} class folder(s) with images in "
                        f"{root}{'/train' if has_train else ''}; need at least 2 "
                        f"(images: {', '.join(archives.IMAGE_EXTENSIONS)})")
    if has_train:
        train = _source(os.path.join(root, "train"), train_classes, class_names)
        test = _source(os.path.join(root, "test"), test_classes, class_names)
        train_idx, test_idx = np.arange(len(train)), np.arange(len(test))
    else:
        if not 0 < data.test_fraction < 1:
            raise UserError(f"data.test_fraction={data.test_fraction} must be in (0, 1)")
        train = test = _source(root, train_classes, class_names)
        train_idx, test_idx = stratified_split(train.labels, data.test_fraction, data.split_seed)
    return archives.DatasetSplits(name="imagefolder", class_names=class_names,
                                train_source=train, train_indices=train_idx,
                                test_source=test, test_indices=test_idx)
