"""CUB-200-2011 (Wah et al., 2011): 200 bird species, 5,994 train / 5,794 test images.

Official file in data.manual_dir:
    CUB_200_2011.tgz   CUB_200_2011/images/<class dir>/<name>.jpg,
                       CUB_200_2011/images.txt ("<image id> <relative path>"),
                       CUB_200_2011/image_class_labels.txt ("<image id> <class id 1..200>"),
                       CUB_200_2011/train_test_split.txt ("<image id> <1 train | 0 test>"),
                       CUB_200_2011/classes.txt ("<class id> 001.Black_footed_Albatross")
Class names drop the numeric prefix ("Black_footed_Albatross"). Bounding boxes, parts and
attributes are not used.
"""
from mgr_jax.data import archives
from mgr_jax.data.datasets import builder

ARCHIVE = "CUB_200_2011.tgz"
ROOT = "CUB_200_2011/"


def _table(files, lines, listing, number_column=None):
    """{first column: (rest of the line, line number)} of a two-column listing; the column
    `number_column` ("first" or "second") must hold ASCII digits."""
    table = {}
    for number, line in lines:
        key, _, value = line.partition(" ")
        value = value.strip()
        if not value:
            raise files.corrupt(ARCHIVE, f"{listing} line {number} has not two columns: "
                                f"{line[:80]!r}")
        checked = {"first": key, "second": value}.get(number_column)
        if checked is not None and not archives.ascii_digits(checked):
            raise files.corrupt(ARCHIVE, f"{listing} line {number}: {checked[:40]!r} is not a "
                                "number")
        if key in table:
            raise files.corrupt(ARCHIVE, f"{listing} line {number} repeats {key[:40]!r} of "
                                f"line {table[key][1]}")
        table[key] = (value, number)
    return table


class MgrBirds(builder.ArchiveBuilder):
    name = "mgr_birds"
    DATASET = "birds"
    NUM_CLASSES = 200
    FILES = (ARCHIVE,)
    HOMEPAGE = "https://www.vision.caltech.edu/datasets/cub_200_2011/"

    def read_index(self, files):
        listings = ("images.txt", "image_class_labels.txt", "train_test_split.txt",
                    "classes.txt")
        text = files.read_numbered(ARCHIVE, [ROOT + k for k in listings])
        images, labels, is_train, classes = (
            _table(files, text[ROOT + k], k, column)
            for k, column in zip(listings, (None, "second", None, "first")))
        class_names = [classes[k][0].partition(".")[2] or classes[k][0]
                       for k in sorted(classes, key=int)]
        splits = {"train": {}, "test": {}}
        for image_id, (path, number) in images.items():
            if image_id not in labels or image_id not in is_train:
                raise files.corrupt(ARCHIVE, f"image id {image_id[:40]!r} (images.txt line "
                                    f"{number}) has no label or split")
            label = builder.check_label(files, ARCHIVE, int(labels[image_id][0]) - 1,
                                        self.NUM_CLASSES)
            flag, flag_line = is_train[image_id]
            if flag not in ("0", "1"):
                raise files.corrupt(ARCHIVE, f"train_test_split.txt line {flag_line}: "
                                    f"{flag[:40]!r} is not 1 (train) or 0 (test)")
            splits["train" if flag == "1" else "test"][f"{ROOT}images/{path}"] = label
        return class_names, {k: [(ARCHIVE, v)] for k, v in splits.items()}


BUILDER = MgrBirds


def load(config):
    """Prepare (once) and open the dataset: `archives.DatasetSplits`."""
    return builder.load(BUILDER, config)
