"""FGVC-Aircraft (Maji et al., 2013), variant level: 100 classes, 6,667 trainval / 3,333 test.

Official file in data.manual_dir:
    fgvc-aircraft-2013b.tar.gz   fgvc-aircraft-2013b/data/images/<id>.jpg (10,000 images),
                                 data/variants.txt (the 100 variant names, one a line),
                                 data/images_variant_trainval.txt and images_variant_test.txt
                                 ("<id> <variant name>", the name may hold spaces)
Training uses `trainval` (train + val, the official training split), testing `test`; labels
follow the order of variants.txt. Images are used whole, the 20-pixel copyright banner at
the bottom included (as torchvision's FGVCAircraft; the paper does not say it crops it).
"""
from mgr_jax.data.datasets import builder

ARCHIVE = "fgvc-aircraft-2013b.tar.gz"
ROOT = "fgvc-aircraft-2013b/data/"


class MgrAircraft(builder.ArchiveBuilder):
    name = "mgr_aircraft"
    DATASET = "aircraft"
    NUM_CLASSES = 100
    FILES = (ARCHIVE,)
    HOMEPAGE = "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/"

    def read_index(self, files):
        names = {k: ROOT + k for k in ("variants.txt", "images_variant_trainval.txt",
                                        "images_variant_test.txt")}
        text = files.read_texts(ARCHIVE, names.values())
        variants = text[names["variants.txt"]]
        label_of = {v: i for i, v in enumerate(variants)}
        splits = {}
        for split, listing in (("train", "images_variant_trainval.txt"),
                               ("test", "images_variant_test.txt")):
            labels = {}
            for line in text[names[listing]]:
                image_id, _, variant = line.partition(" ")
                if variant not in label_of:
                    raise files.corrupt(ARCHIVE, f"{listing} names variant {variant!r} that "
                                        "variants.txt lacks")
                labels[f"{ROOT}images/{image_id}.jpg"] = label_of[variant]
            splits[split] = [(ARCHIVE, labels)]
        return variants, splits


BUILDER = MgrAircraft


def load(config):
    """Prepare (once) and open the dataset: `archives.DatasetSplits`."""
    return builder.load(BUILDER, config)
