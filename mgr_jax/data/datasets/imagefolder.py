"""A user's own labelled images: one folder per class, read straight from disk.

    data.manual_dir/<class name>/**/*.jpg|png|...          (test split drawn by a fixed seed)
    data.manual_dir/train/<class name>/...  and  data.manual_dir/test/<class name>/...

Classes are the sub-folders holding at least one image, in sorted order (label = position).
Without train/ and test/, `data.test_fraction` of each class (by `data.split_seed`) is the
test split. No preparing step: the files are random-access already.

Every image is decoded once before training (`check_images`; a header check would miss a
truncated file), so a damaged one is refused in one line naming it before the run starts
instead of in a loader worker mid-epoch. The result is kept beside the dataset in
`<data.manual_dir>/.mgr_jax_checked_images.json` (size and modification time of each file
that decoded), so the cost is paid once: later runs decode only images added or changed since.
"""
import concurrent.futures
import json
import os
import stat

import numpy as np

from mgr_jax import files as files_lib
from mgr_jax.data import archives, datasets, transforms
from mgr_jax.data.protocol import stratified_split
from mgr_jax.errors import UserError

CHECKED_FILE = ".mgr_jax_checked_images.json"
_CHECKED_VERSION = 1


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


def decode_problem(path):
    """None when the file at `path` decodes as the loader will decode it, else why not."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return f"cannot be read: {e.strerror}"
    if not data:
        return "is empty (0 bytes)"
    try:
        transforms.decode(data)
    except UserError as e:
        return "does not decode: " + str(e).split(": ", 1)[-1]
    return None


def _stamp(path):
    try:
        st = os.stat(path)
    except OSError as e:
        raise UserError(f"imagefolder: cannot read {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the decoding, a device never end
        raise UserError(f"imagefolder: {path} is {archives.non_regular(path)}, not an image "
                        "file; remove it or replace it with the image")
    return [int(st.st_size), int(st.st_mtime_ns)]


def _read_checked(path):
    """{relative path: [size, mtime_ns]} of the images a previous check decoded."""
    if archives.non_regular(path):  # none yet, or something other than our JSON file
        return {}
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(saved, dict) or saved.get("version") != _CHECKED_VERSION:
        return {}
    return saved.get("images") if isinstance(saved.get("images"), dict) else {}


def check_images(root, relpaths, num_threads=0):
    """Decode every image under `root` not decoded before in its current version (see the
    module docstring); UserError naming the first that fails. Returns how many it decoded."""
    stamps = {rel: _stamp(os.path.join(root, rel)) for rel in relpaths}
    cache = os.path.join(root, CHECKED_FILE)
    checked = _read_checked(cache)
    todo = [rel for rel in relpaths if checked.get(rel) != stamps[rel]]
    if not todo:
        return 0
    if len(todo) >= 500:
        print(f"imagefolder: decoding {len(todo)} images once to check them (remembered in "
              f"{cache})", flush=True)
    threads = num_threads or min(os.cpu_count() or 1, 16)
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        problems = list(pool.map(lambda rel: decode_problem(os.path.join(root, rel)), todo))
    bad = [(rel, why) for rel, why in zip(todo, problems) if why]
    if bad:
        rel, why = bad[0]
        more = f" (and {len(bad) - 1} more images that fail)" if len(bad) > 1 else ""
        raise UserError(f"imagefolder: {os.path.join(root, rel)} {why}{more}; replace or remove "
                        "it (every image is decoded once before training)")
    try:
        files_lib.write_json(cache, {"version": _CHECKED_VERSION, "images": stamps})
    except OSError:
        pass  # a read-only dataset folder: the images are checked again next time.
    return len(todo)


def _relative(classes, part=""):
    """Image paths relative to the dataset root, of {class: paths relative to root/part}."""
    return [os.path.join(part, p) for paths in classes.values() for p in paths]


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
        images = _relative(train_classes, "train") + _relative(test_classes, "test")
    else:
        if not 0 < data.test_fraction < 1:
            raise UserError(f"data.test_fraction={data.test_fraction} must be in (0, 1)")
        train = test = _source(root, train_classes, class_names)
        train_idx, test_idx = stratified_split(train.labels, data.test_fraction, data.split_seed)
        images = _relative(train_classes)
    splits = archives.DatasetSplits(name="imagefolder", class_names=class_names,
                                    train_source=train, train_indices=train_idx,
                                    test_source=test, test_indices=test_idx)
    datasets.check_split_sizes(splits, data)  # seconds before the decoding below
    check_images(root, sorted(images), data.num_threads)
    return splits
