"""What the dataset modules share: checks of the official files, streaming archive reads,
random-access sources and the dataset description handed to the pipeline.

Nothing here imports TensorFlow Datasets: the tfds builder base is in `builder.py`, imported
only when a paper dataset is loaded. Loader workers import this module and `transforms.py`.
"""
import dataclasses
import io
import os
import tarfile
import zlib

import numpy as np
import scipy.io

from mgr_jax.errors import UserError

DOCS = "docs/datasets.md"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# Errors that a damaged archive or annotation file raises while it is read.
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError, ValueError, KeyError,
                IndexError, TypeError, UnicodeDecodeError)


def where(manual_dir):
    return f"data.manual_dir (now {manual_dir!r}; see {DOCS})"


class OfficialFiles:
    """The official files of one dataset in `manual_dir`: checked up front, then read.

    Construction fails fast, in well under a second, with one UserError line per problem
    (a missing file, or one that is not a readable archive / .mat file), before any long
    streaming read starts. Later read errors name the file as well.
    """

    def __init__(self, dataset, manual_dir, names):
        self.dataset, self.manual_dir = dataset, manual_dir
        if not manual_dir:
            raise UserError(f"{dataset}: data.manual_dir is empty; set it to the folder that "
                            f"holds the official files {', '.join(names)} (see {DOCS})")
        for name in names:
            path = self.path(name)
            if not os.path.isfile(path):
                raise UserError(f"{dataset}: {path} not found; put the official file {name} in "
                                f"{where(manual_dir)}")
            if name.endswith(".mat"):
                self.load_mat(name)
            else:
                self._check_archive(name)

    def path(self, name):
        return os.path.join(self.manual_dir, name)

    def corrupt(self, name, why):
        why = " ".join(str(why).split())  # one line, however the library worded it.
        why = why if len(why) <= 160 else why[:157] + "..."
        return UserError(f"{self.dataset}: {self.path(name)} is damaged or not the official file "
                         f"({why}); download it again into {where(self.manual_dir)}")

    def _check_archive(self, name):
        """Open the archive and read its first member header (catches wrong or empty files)."""
        try:
            with tarfile.open(self.path(name), "r:*") as tar:
                first = tar.next()
        except tarfile.ReadError:
            raise self.corrupt(name, "not a readable tar / tar.gz archive") from None
        except _READ_ERRORS as e:
            raise self.corrupt(name, f"{type(e).__name__}: {e}") from None
        if first is None:
            raise self.corrupt(name, "the archive is empty")

    def iter_archive(self, name, wanted):
        """Stream (member name, bytes) for the archive's regular files with wanted(name) true.

        One sequential pass (no seeks: a .tar.gz is read once, whatever its size); member names
        lose a leading './'.
        """
        try:
            with tarfile.open(self.path(name), "r|*") as tar:
                for member in tar:
                    member_name = member.name[2:] if member.name.startswith("./") else member.name
                    if member.isfile() and wanted(member_name):
                        yield member_name, tar.extractfile(member).read()
        except _READ_ERRORS as e:
            raise self.corrupt(name, f"{type(e).__name__}: {e}") from None

    def read_members(self, name, members):
        """{member: bytes} for the listed members; stops reading once all are found."""
        members, found = set(members), {}
        for member_name, data in self.iter_archive(name, members.__contains__):
            found[member_name] = data
            if len(found) == len(members):
                break
        missing = sorted(members - set(found))
        if missing:
            raise self.corrupt(name, f"it has no {missing[0]}")
        return found

    def read_texts(self, name, members):
        """{member: list of non-empty, non-comment lines} of text members of an archive."""
        return self.texts(name, self.read_members(name, members))

    def texts(self, name, raw):
        """{member: list of non-empty, non-comment lines} of {member: bytes} read from `name`."""
        try:
            return {k: [ln.strip() for ln in v.decode("utf-8").splitlines()
                        if ln.strip() and not ln.startswith("#")] for k, v in raw.items()}
        except UnicodeDecodeError as e:
            raise self.corrupt(name, f"a text member is not UTF-8: {e}") from None

    def scan(self, name, members):
        """(every member as (name, is a folder), {member: bytes} of `members`): one pass over
        the whole archive, for annotations that live in the folder layout itself."""
        members, listing, found = set(members), [], {}
        try:
            with tarfile.open(self.path(name), "r|*") as tar:
                for member in tar:
                    member_name = member.name[2:] if member.name.startswith("./") else member.name
                    listing.append((member_name.rstrip("/"), member.isdir()))
                    if member.isfile() and member_name in members:
                        found[member_name] = tar.extractfile(member).read()
        except _READ_ERRORS as e:
            raise self.corrupt(name, f"{type(e).__name__}: {e}") from None
        missing = sorted(members - set(found))
        if missing:
            raise self.corrupt(name, f"it has no {missing[0]}")
        return listing, found

    def load_mat(self, name, data=None, inside=None):
        """scipy.io.loadmat of a .mat file in manual_dir (or of `data`, a member of `inside`)."""
        try:
            return scipy.io.loadmat(io.BytesIO(data) if data is not None else self.path(name),
                                    squeeze_me=True)
        except Exception as e:  # noqa: BLE001 (scipy raises many types on a bad file)
            raise self.corrupt(inside or name, f"cannot read {name}: {type(e).__name__}: "
                               f"{e}") from None

    def field(self, name, mat, key):
        """mat[key] as a 1-d array, or a damaged-file UserError naming the missing key."""
        if key not in mat:
            raise self.corrupt(name, f"it has no {key!r} entry")
        return np.atleast_1d(mat[key])


@dataclasses.dataclass
class Index:
    """The images of one official split: archive member (or file) keys and 0-based labels."""
    keys: list
    labels: np.ndarray


class ArraySource:
    """Random access to encoded images: `read(i) -> bytes`, with `keys` and `labels`.

    Wraps a tfds array_record data source (or anything indexable whose items are dicts with
    an "image" entry of encoded bytes). Picklable: loader workers get a copy.
    """

    def __init__(self, data_source, index: Index):
        self._source, self.keys, self.labels = data_source, index.keys, index.labels

    def __len__(self):
        return len(self.labels)

    def read(self, i):
        return self._source[int(i)]["image"]

    def describe(self, i):
        """How messages name image i: its member path in the official archive."""
        return self.keys[int(i)]


class FileSource:
    """Random access to image files on disk (the image folder): `read(i) -> bytes`."""

    def __init__(self, root, relpaths, labels):
        self.root, self.keys = root, list(relpaths)
        self.labels = np.asarray(labels, np.int32)

    def __len__(self):
        return len(self.labels)

    def describe(self, i):
        """How messages name image i: its path."""
        return os.path.join(self.root, self.keys[int(i)])

    def read(self, i):
        path = self.describe(i)
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise UserError(f"imagefolder: cannot read {path}: {e.strerror}") from None


@dataclasses.dataclass
class DatasetSplits:
    """A dataset as the pipeline needs it: the official train and test images.

    `train_indices` / `test_indices` index the sources in canonical order (sorted by key, so
    the SPEC's fixed-seed splits do not depend on how the files were stored).
    """
    name: str
    class_names: list
    train_source: object
    train_indices: np.ndarray
    test_source: object
    test_indices: np.ndarray

    @property
    def num_classes(self):
        return len(self.class_names)


def canonical_order(keys):
    """Indices that sort `keys` (unique strings): the order the splits are drawn in."""
    return np.asarray(sorted(range(len(keys)), key=keys.__getitem__), np.int64)
