"""Oxford Flowers-102 (Nilsback and Zisserman, 2008): 102 classes, 8,189 images.

Official files in data.manual_dir:
    102flowers.tgz    jpg/image_00001.jpg ... image_08189.jpg
    imagelabels.mat   labels: (8189,) class of each image, 1..102
    setid.mat         trnid (1,020), valid (1,020), tstid (6,149): 1-based image ids
trnid + valid (2,040 images) are the official training split, tstid the test split. The
official files carry no class names: classes are named by their official number
("class_001" ... "class_102").
"""
from mgr_jax.data.datasets import builder

ARCHIVE = "102flowers.tgz"


class MgrFlowers(builder.ArchiveBuilder):
    name = "mgr_flowers"
    DATASET = "flowers"
    NUM_CLASSES = 102
    FILES = (ARCHIVE, "imagelabels.mat", "setid.mat")
    HOMEPAGE = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
    CLASS_FILE = "imagelabels.mat"

    def read_index(self, files):
        labels = files.integer_field("imagelabels.mat", files.load_mat("imagelabels.mat"),
                                     "labels")
        setid = files.load_mat("setid.mat")
        ids = {k: files.integer_field("setid.mat", setid, k) for k in ("trnid", "valid",
                                                                          "tstid")}

        def split(image_ids):
            out = {}
            for image_id in image_ids:
                if not 1 <= image_id <= len(labels):
                    raise files.corrupt("setid.mat", f"image id {image_id} is outside "
                                        f"1..{len(labels)} (imagelabels.mat)")
                out[f"jpg/image_{image_id:05d}.jpg"] = builder.check_label(
                    files, "imagelabels.mat", int(labels[image_id - 1]) - 1, self.NUM_CLASSES)
            return out

        class_names = [f"class_{i:03d}" for i in range(1, self.NUM_CLASSES + 1)]
        train = split(list(ids["trnid"]) + list(ids["valid"]))
        return class_names, {"train": [(ARCHIVE, train)], "test": [(ARCHIVE, split(ids["tstid"]))]}


BUILDER = MgrFlowers


def load(config):
    """Prepare (once) and open the dataset: `archives.DatasetSplits`."""
    return builder.load(BUILDER, config)
