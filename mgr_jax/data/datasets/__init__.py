"""The paper's six datasets and a user's image folder, read from their official files.

    config.data.name     files expected in config.data.manual_dir (docs/datasets.md)
    cars                 cars_train.tgz, cars_test.tgz, car_devkit.tgz,
                         cars_test_annos_withlabels.mat
    aircraft             fgvc-aircraft-2013b.tar.gz
    birds                CUB_200_2011.tgz
    dtd                  dtd-r1.0.1.tar.gz
    flowers              102flowers.tgz, imagelabels.mat, setid.mat
    pets                 images.tar.gz, annotations.tar.gz
    imagefolder          <class name>/*.jpg|png (or train/<class>/..., test/<class>/...)

The archives are prepared once into tfds array_record files (`data.prepared_dir`), then read
through `mgr_jax.data.grain_pipeline.GrainPipeline`. Each dataset module has
`load(config) -> archives.DatasetSplits`; importing this package is cheap (no tfds): the
dataset modules load on demand.
"""
import importlib

from mgr_jax.errors import UserError

ARCHIVE_DATASETS = ("cars", "aircraft", "birds", "dtd", "flowers", "pets")
NAMES = ARCHIVE_DATASETS + ("imagefolder",)


def load_splits(config):
    """The official train/test images of `config.data.name` (`archives.DatasetSplits`)."""
    name = config.data.name
    if name not in NAMES:
        raise UserError(f"data.name={name!r} is not a known dataset; choose one of "
                        f"{['digits', *NAMES]}")
    return importlib.import_module(f"mgr_jax.data.datasets.{name}").load(config)


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
