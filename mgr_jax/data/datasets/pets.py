"""Oxford-IIIT Pets (Parkhi et al., 2012): 37 breeds, 3,680 trainval / 3,669 test images.

Official files in data.manual_dir:
    images.tar.gz        images/<Breed_name>_<n>.jpg
    annotations.tar.gz   annotations/trainval.txt and annotations/test.txt
                         ("<image name> <class id 1..37> <species> <breed id>"; lines
                         starting with '#' are comments)
Class names are the image-name prefixes ("Abyssinian", "american_bulldog", ...), ordered by
class id. Some images are PNG or CMYK JPEG under a .jpg name: PIL reads them all as RGB.
"""
from mgr_jax.data import archives
from mgr_jax.data.datasets import builder

IMAGES = "images.tar.gz"
ANNOTATIONS = "annotations.tar.gz"


class MgrPets(builder.ArchiveBuilder):
    name = "mgr_pets"
    DATASET = "pets"
    NUM_CLASSES = 37
    FILES = (IMAGES, ANNOTATIONS)
    HOMEPAGE = "https://www.robots.ox.ac.uk/~vgg/data/pets/"
    CLASS_FILE = ANNOTATIONS

    def read_index(self, files):
        lists = {"train": "annotations/trainval.txt", "test": "annotations/test.txt"}
        text = files.read_numbered(ANNOTATIONS, lists.values())
        names, splits = {}, {}
        for split, listing in lists.items():
            labels = {}
            for number, line in text[listing]:
                fields = line.split()
                if len(fields) < 2 or not archives.ascii_digits(fields[1]):
                    raise files.corrupt(ANNOTATIONS, f"{listing} line {number} is not '<image> "
                                        f"<class id> ...': {line[:80]!r}")
                label = builder.check_label(files, ANNOTATIONS, int(fields[1]) - 1,
                                            self.NUM_CLASSES)
                names.setdefault(label, fields[0].rpartition("_")[0] or fields[0])
                labels[f"images/{fields[0]}.jpg"] = label
            splits[split] = [(IMAGES, labels)]
        class_names = [names.get(i, f"class_{i + 1:02d}") for i in range(self.NUM_CLASSES)]
        return class_names, splits


BUILDER = MgrPets


def load(config):
    """Prepare (once) and open the dataset: `archives.DatasetSplits`."""
    return builder.load(BUILDER, config)
