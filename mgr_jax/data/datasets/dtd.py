"""Describable Textures Dataset (Cimpoi et al., 2014): 47 classes, 5,640 images.

Official file in data.manual_dir:
    dtd-r1.0.1.tar.gz   dtd/images/<class>/<class>_<n>.jpg,
                        dtd/labels/train1.txt, val1.txt, test1.txt ("<class>/<file>.jpg")
The first of the ten official partitions: train1 + val1 (3,760 images) are the official
training split, test1 (1,880) the test split. Classes in alphabetical order.
"""
from mgr_jax.data.datasets import builder

ARCHIVE = "dtd-r1.0.1.tar.gz"
ROOT = "dtd/"


class MgrDtd(builder.ArchiveBuilder):
    name = "mgr_dtd"
    DATASET = "dtd"
    NUM_CLASSES = 47
    FILES = (ARCHIVE,)
    HOMEPAGE = "https://www.robots.ox.ac.uk/~vgg/data/dtd/"

    def read_index(self, files):
        lists = {k: f"{ROOT}labels/{k}1.txt" for k in ("train", "val", "test")}
        text = files.read_texts(ARCHIVE, lists.values())
        paths = {"train": text[lists["train"]] + text[lists["val"]], "test": text[lists["test"]]}
        class_names = sorted({p.partition("/")[0] for split in paths.values() for p in split})
        label_of = {c: i for i, c in enumerate(class_names)}
        return class_names, {
            split: [(ARCHIVE, {f"{ROOT}images/{p}": label_of[p.partition("/")[0]]
                               for p in listed})]
            for split, listed in paths.items()}


BUILDER = MgrDtd


def load(config):
    """Prepare (once) and open the dataset: `archives.DatasetSplits`."""
    return builder.load(BUILDER, config)
