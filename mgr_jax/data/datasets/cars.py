"""Stanford Cars (Krause et al., 2013): 196 classes, 8,144 train / 8,041 test images.

Official files in data.manual_dir (as distributed by Stanford):
    cars_train.tgz                    cars_train/00001.jpg ... 08144.jpg
    cars_test.tgz                     cars_test/00001.jpg ... 08041.jpg
    car_devkit.tgz                    devkit/cars_meta.mat (class_names, 1x196 cell),
                                      devkit/cars_train_annos.mat (annotations struct:
                                      bbox_x1, bbox_y1, bbox_x2, bbox_y2, class (1-based), fname)
    cars_test_annos_withlabels.mat    annotations struct as above, for the test images
The bounding boxes are not used (whole images, as the paper).
"""
from mgr_jax.data.datasets import builder

DEVKIT_META = "devkit/cars_meta.mat"
DEVKIT_TRAIN = "devkit/cars_train_annos.mat"


def _annotations(files, name, mat, prefix, num_classes):
    ann = files.field(name, mat, "annotations")
    try:
        pairs = [(str(a["fname"]), int(a["class"]) - 1) for a in ann]
    except (ValueError, IndexError, TypeError, OverflowError) as e:
        raise files.corrupt(name, f"annotations lack fname/class: {e}") from None
    return {f"{prefix}/{fname}": builder.check_label(files, name, label, num_classes)
            for fname, label in pairs}


class MgrCars(builder.ArchiveBuilder):
    name = "mgr_cars"
    DATASET = "cars"
    NUM_CLASSES = 196
    FILES = ("cars_train.tgz", "cars_test.tgz", "car_devkit.tgz",
             "cars_test_annos_withlabels.mat")
    HOMEPAGE = "https://ai.stanford.edu/~jkrause/cars/car_dataset.html"
    CLASS_FILE = "car_devkit.tgz"

    def read_index(self, files):
        dev = files.read_members("car_devkit.tgz", [DEVKIT_META, DEVKIT_TRAIN])
        meta = files.load_mat(DEVKIT_META, dev[DEVKIT_META], inside="car_devkit.tgz")
        class_names = [str(n) for n in files.field("car_devkit.tgz", meta, "class_names")]
        train_mat = files.load_mat(DEVKIT_TRAIN, dev[DEVKIT_TRAIN], inside="car_devkit.tgz")
        train = _annotations(files, "car_devkit.tgz", train_mat, "cars_train", self.NUM_CLASSES)
        test_mat = files.load_mat("cars_test_annos_withlabels.mat")
        test = _annotations(files, "cars_test_annos_withlabels.mat", test_mat, "cars_test",
                            self.NUM_CLASSES)
        return class_names, {"train": [("cars_train.tgz", train)],
                             "test": [("cars_test.tgz", test)]}


BUILDER = MgrCars


def load(config):
    """Prepare (once) and open the dataset: `archives.DatasetSplits`."""
    return builder.load(BUILDER, config)
