"""The tfds builder behind every paper dataset, and loading one as random-access sources.

Each dataset module subclasses `ArchiveBuilder` (a `tfds.core.GeneratorBasedBuilder`) and says
which official files it needs and how to read their annotations (`read_index`). Preparing
streams each archive once and writes array_record shards of

    {"image": the image file's original encoded bytes (JPEG as distributed; nothing is
              re-encoded), "label": ClassLabel, "key": the archive member path}

under `data.prepared_dir`. Storing encoded bytes keeps TensorFlow out of both preparing and
reading (tfds needs TF only to encode/decode images itself); the loader workers decode with
PIL. `tfds` data sources then give O(1) random access to each split.
"""
import contextlib
import fcntl
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from mgr_jax import files
from mgr_jax.data import archives
from mgr_jax.errors import UserError

_VERSION = "1.0.0"


class ArchiveBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the datasets' builders: subclasses set the class attributes and `read_index`."""

    VERSION = tfds.core.Version(_VERSION)
    RELEASE_NOTES = {_VERSION: "Encoded images and labels from the official archives."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Put the official files in data.manual_dir: {archives.DOCS}."
    DATASET = ""  # our short name ("cars"), used in messages and as the pipeline's name.
    NUM_CLASSES = 0
    FILES = ()  # official file names expected in manual_dir.
    HOMEPAGE = ""
    CLASS_FILE = None  # the file the class list comes from (FILES[0] when None).

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.DATASET}: official train/test splits, encoded images as "
                        "distributed (decode with PIL).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(), dtype=np.object_),
                "label": tfds.features.ClassLabel(num_classes=self.NUM_CLASSES),
                "key": tfds.features.Text(),
            }),
            homepage=self.HOMEPAGE,
            metadata=tfds.core.MetadataDict(),
        )

    def read_index(self, files):
        """(class names, {split: [(archive name, {member: label}), ...]}) from annotations."""
        raise NotImplementedError

    checked_files = None  # the OfficialFiles that `load` checked (each .mat file read once)

    def _split_generators(self, dl_manager):
        files = self.checked_files or archives.OfficialFiles(
            self.DATASET, os.fspath(dl_manager.manual_dir), self.FILES)
        class_names, splits = self.read_index(files)
        if len(class_names) != self.NUM_CLASSES:
            raise files.corrupt(self.CLASS_FILE or self.FILES[0],
                                f"found {len(class_names)} classes, expected {self.NUM_CLASSES}")
        self.info.metadata["class_names"] = [str(c) for c in class_names]
        return {split: self._generate_examples(files, parts) for split, parts in splits.items()}

    def _generate_examples(self, files, parts):
        for archive, labels in parts:
            seen = 0
            for member, data in files.iter_archive(archive, labels.__contains__):
                seen += 1
                yield member, {"image": data, "label": int(labels[member]), "key": member}
            if seen != len(labels):
                raise files.corrupt(archive, f"it holds {seen} of the {len(labels)} images its "
                                    "annotations list")


def check_label(files, name, label, num_classes):
    """A 0-based label, or a damaged-file UserError naming `name` when out of range."""
    if not 0 <= label < num_classes:
        raise files.corrupt(name, f"label {label + 1} is outside 1..{num_classes}")
    return label


def _check_prepared_dir(name, prepared_dir):
    """UserError unless `prepared_dir` is a folder, or can become one, outside /proc, /sys and
    /dev (kernel files, which `makedirs` and the writers would trip over)."""
    real = os.path.realpath(prepared_dir)
    for top in ("/proc", "/sys", "/dev"):
        if real == top or real.startswith(top + os.sep):
            raise UserError(f"{name}: data.prepared_dir={prepared_dir!r} is under {top}, not a "
                            "folder for the prepared dataset; point it at a writable folder")
    path = real
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise UserError(f"{name}: data.prepared_dir={prepared_dir!r} cannot be a folder: {path} "
                        "is a file; point it at a writable folder")


@contextlib.contextmanager
def _lock(path):
    """An exclusive lock file, so runs started together prepare a dataset once."""
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_index(source):
    """(keys, labels) of a tfds data source, in its order."""
    keys, labels = [], []
    for start in range(0, len(source), 256):
        for ex in source.__getitems__(list(range(start, min(start + 256, len(source))))):
            key = ex["key"]
            keys.append(key.decode("utf-8") if isinstance(key, bytes) else str(key))
            labels.append(int(ex["label"]))
    return keys, labels


def _split_index(path, sources):
    """{split: {"keys", "labels"}} in data-source order, cached in `path` when writable."""
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    index = {split: dict(zip(("keys", "labels"), _read_index(sources[split])))
             for split in ("train", "test")}
    try:
        files.write_json(path, index)
    except OSError:
        pass  # a read-only prepared_dir: read the labels again next time.
    return index


def load(builder_cls, config):
    """Prepare (once) and open a paper dataset: `archives.DatasetSplits`."""
    data = config.data
    manual_dir = os.path.abspath(data.manual_dir) if data.manual_dir else ""
    prepared_dir = data.prepared_dir or (os.path.join(manual_dir, "prepared") if manual_dir
                                         else "")
    name = builder_cls.DATASET
    if not prepared_dir:
        raise UserError(f"{name}: data.manual_dir is empty; set it to the folder that holds "
                        f"the official files {', '.join(builder_cls.FILES)} (see {archives.DOCS})")
    _check_prepared_dir(name, prepared_dir)
    version_dir = os.path.join(prepared_dir, builder_cls.name, _VERSION)
    if not os.path.exists(os.path.join(version_dir, "dataset_info.json")):
        # Not prepared yet: check every official file (seconds) before creating anything.
        files = archives.OfficialFiles(name, manual_dir, builder_cls.FILES)
        try:
            os.makedirs(prepared_dir, exist_ok=True)
            with _lock(os.path.join(prepared_dir, f".{builder_cls.name}.lock")):
                builder = builder_cls(data_dir=prepared_dir, file_format="array_record")
                builder.checked_files = files
                if not builder.is_prepared():  # another run may have prepared it meanwhile.
                    print(f"{name}: preparing {prepared_dir} from the official files in "
                          f"{manual_dir} (once)", flush=True)
                    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
                        manual_dir=manual_dir, try_download_gcs=False))
        except (PermissionError, FileExistsError, NotADirectoryError) as e:
            raise UserError(f"{name}: cannot write the prepared dataset to {prepared_dir} "
                            f"({e.strerror}); set data.prepared_dir to a writable folder"
                            ) from None
    # Prepared: read-only from here on (a shared, read-only prepared_dir works).
    builder = builder_cls(data_dir=prepared_dir, file_format="array_record")
    sources = builder.as_data_source()
    index = _split_index(os.path.join(version_dir, "mgr_index.json"), sources)
    split_sources = {}
    for split in ("train", "test"):
        idx = archives.Index(index[split]["keys"], np.asarray(index[split]["labels"], np.int32))
        split_sources[split] = archives.ArraySource(sources[split], idx)
    train, test = split_sources["train"], split_sources["test"]
    return archives.DatasetSplits(
        name=name, class_names=list(builder.info.metadata["class_names"]),
        train_source=train, train_indices=archives.canonical_order(train.keys),
        test_source=test, test_indices=archives.canonical_order(test.keys))
