"""Describable Textures Dataset (Cimpoi et al., 2014): 47 classes, 5,640 images.

Official file in data.manual_dir:
    dtd-r1.0.1.tar.gz   dtd/images/<class>/<class>_<n>.jpg,
                        dtd/labels/train1.txt, val1.txt, test1.txt ("<class>/<file>.jpg")
The first of the ten official partitions: train1 + val1 (3,760 images) are the official
training split, test1 (1,880) the test split. The classes are the 47 folders under
dtd/images/, in alphabetical order (label = position): they do not depend on which classes
the label lists happen to mention.
"""
from mgr_jax.data.datasets import builder

ARCHIVE = "dtd-r1.0.1.tar.gz"
ROOT = "dtd/"
IMAGES = f"{ROOT}images/"


def class_folders(listing):
    """Sorted names of the folders directly under dtd/images/ in an archive listing."""
    names = set()
    for name, is_dir in listing:
        if not name.startswith(IMAGES):
            continue
        first, slash, _ = name[len(IMAGES):].partition("/")
        if first and not first.startswith(".") and (is_dir or slash):
            names.add(first)
    return sorted(names)


class MgrDtd(builder.ArchiveBuilder):
    name = "mgr_dtd"
    DATASET = "dtd"
    NUM_CLASSES = 47
    FILES = (ARCHIVE,)
    HOMEPAGE = "https://www.robots.ox.ac.uk/~vgg/data/dtd/"

    def read_index(self, files):
        lists = {k: f"{ROOT}labels/{k}1.txt" for k in ("train", "val", "test")}
        listing, raw = files.scan(ARCHIVE, lists.values())
        text = files.texts(ARCHIVE, raw)
        class_names = class_folders(listing)
        label_of = {c: i for i, c in enumerate(class_names)}
        paths = {"train": text[lists["train"]] + text[lists["val"]], "test": text[lists["test"]]}
        for split, listed in paths.items():
            stray = next((p for p in listed if p.partition("/")[0] not in label_of), None)
            if stray is not None:
                raise files.corrupt(ARCHIVE, f"its {split} list names {stray}, which is not in a "
                                    f"class folder under {IMAGES}")
        return class_names, {
            split: [(ARCHIVE, {f"{IMAGES}{p}": label_of[p.partition("/")[0]] for p in listed})]
            for split, listed in paths.items()}


BUILDER = MgrDtd


def load(config):
    """Prepare (once) and open the dataset: `archives.DatasetSplits`."""
    return builder.load(BUILDER, config)
