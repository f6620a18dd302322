"""What the dataset modules share: checks of the official files, streaming archive reads,
random-access sources and the dataset description handed to the pipeline.

Nothing here imports TensorFlow Datasets: the tfds builder base is in `builder.py`, imported
only when a paper dataset is loaded. Loader workers import this module and `transforms.py`.

Reading is bounded (docs/threat_model.md): an official file must be a regular file (a FIFO
or a device is refused before it is opened); an archive member is read only if its header
declares at most MAX_MEMBER_BYTES, and one pass over an archive may decompress and hand out at
most ARCHIVE_RATIO x the archive's size + ARCHIVE_FLOOR bytes; a member named twice is
refused. A .mat file (at most MAX_MAT_BYTES) is read once: its compressed variables are
decompressed here, counted against MAT_RATIO x its size + MAT_FLOOR bytes together with the
cells and struct fields its arrays declare (`bounded_read`), and scipy then
reads the decompressed copy.
"""
import bz2
import dataclasses
import gzip
import io
import lzma
import os
import stat
import tarfile
import zlib

import numpy as np
import scipy.io

from mgr_jax.data.bounded_read import CHUNK as _CHUNK
from mgr_jax.data.bounded_read import inflate_mat
from mgr_jax.data.bounded_read import Budget as _Budget
from mgr_jax.data.bounded_read import TooLarge as _TooLarge
from mgr_jax.errors import UserError

DOCS = "docs/datasets.md"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# Errors that a damaged archive or annotation file raises while it is read.
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, ValueError,
                KeyError, IndexError, TypeError, UnicodeDecodeError)
MAX_MEMBER_BYTES = 64 << 20  # one archive member (far more than any official file's)
ARCHIVE_RATIO, ARCHIVE_FLOOR = 64, 256 << 20  # bytes one pass may decompress and hand out
MAX_MAT_BYTES = 64 << 20  # a .mat file (the official ones are under 1 MB)
MAT_RATIO, MAT_FLOOR = 16, 32 << 20  # bytes a .mat file may expand to
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def where(manual_dir):
    return f"data.manual_dir (now {manual_dir!r}; see {DOCS})"


def non_regular(path):
    """None if `path` is a regular file (links followed), else what it is: "missing",
    "a FIFO (named pipe)", "a directory", ... (checked before anything opens it)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except (OSError, ValueError) as e:
        return f"unreadable ({type(e).__name__}: {e})"
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _FILE_KINDS if test(mode)), "not a regular file")


class _Counted:
    """A binary stream whose reads are charged to a `_Budget` (decompressed bytes)."""

    def __init__(self, f, budget):
        self._f, self._budget = f, budget

    def read(self, n=-1):
        data = self._f.read(n if n is not None and n >= 0 else _CHUNK)
        self._budget.charge(len(data))
        return data


def _decompressed(raw):
    """A reader of the decompressed bytes of archive file `raw` (gzip, bzip2, xz or none)."""
    head = raw.read(6)
    raw.seek(0)
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head[:3] == b"BZh":
        return bz2.BZ2File(raw)
    if head == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(raw)
    return raw


class OfficialFiles:
    """The official files of one dataset in `manual_dir`: checked up front, then read.

    Construction fails fast, in well under a second, with one UserError line per problem
    (a missing file, one that is not a regular file, or one that is not a readable archive /
    .mat file), before any long streaming read starts. Later read errors name the file as
    well. A .mat file is read once: the check's result is kept for the reads after it.
    """

    def __init__(self, dataset, manual_dir, names):
        self.dataset, self.manual_dir = dataset, manual_dir
        self._mats = {}
        if not manual_dir:
            raise UserError(f"{dataset}: data.manual_dir is empty; set it to the folder that "
                            f"holds the official files {', '.join(names)} (see {DOCS})")
        for name in names:
            path = self.path(name)
            problem = non_regular(path)
            if problem == "missing":
                raise UserError(f"{dataset}: {path} not found; put the official file {name} in "
                                f"{where(manual_dir)}")
            if problem:
                raise UserError(f"{dataset}: {path} is {problem}, not the official file {name};"
                                f" put the file itself in {where(manual_dir)}")
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

    def _open(self, name):
        """The official file `name` opened for reading, if it is still a regular file."""
        path = self.path(name)
        problem = non_regular(path)
        if problem:
            raise self.corrupt(name, f"it is {problem}, not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # never blocks, even on a FIFO
        f = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            f.close()
            raise self.corrupt(name, "it is not a regular file")
        return f

    def _check_archive(self, name):
        """Open the archive and read its first member header (catches wrong or empty files)."""
        try:
            with self._open(name) as raw, tarfile.open(fileobj=raw, mode="r:*") as tar:
                first = tar.next()
        except tarfile.ReadError:
            raise self.corrupt(name, "not a readable tar / tar.gz archive") from None
        except _READ_ERRORS as e:
            raise self.corrupt(name, f"{type(e).__name__}: {e}") from None
        if first is None:
            raise self.corrupt(name, "the archive is empty")

    def _members(self, name):
        """Yield (member name, TarInfo, tar) in one bounded sequential pass over archive
        `name` (see the module docstring); member names lose a leading './'."""
        with self._open(name) as raw:
            size = os.fstat(raw.fileno()).st_size
            budget = _Budget(ARCHIVE_RATIO * size + ARCHIVE_FLOOR,
                             f"the archive ({size:,} bytes)")
            with _decompressed(raw) as stream, tarfile.open(
                    fileobj=_Counted(stream, budget), mode="r|") as tar:
                for member in tar:
                    member_name = member.name[2:] if member.name.startswith("./") else member.name
                    yield member_name, member, tar, budget

    def _read_member(self, member_name, member, tar, budget):
        """The bytes of a regular member, its declared size checked before it is read."""
        if member.size > MAX_MEMBER_BYTES:
            raise _TooLarge(f"member {member_name} declares {member.size:,} bytes, past the "
                            f"limit of {MAX_MEMBER_BYTES:,} for one member")
        budget.charge(member.size)  # sparse members expand without reading the archive
        data = tar.extractfile(member).read(member.size)
        if len(data) != member.size:
            raise _TooLarge(f"member {member_name} is truncated")
        return data

    def iter_archive(self, name, wanted):
        """Stream (member name, bytes) for the archive's regular files with wanted(name) true.

        One sequential pass (no seeks: a .tar.gz is read once, whatever its size); member names
        lose a leading './'. A wanted member that appears twice is refused.
        """
        seen = set()
        try:
            for member_name, member, tar, budget in self._members(name):
                if member.isfile() and wanted(member_name):
                    if member_name in seen:
                        raise _TooLarge(f"it holds {member_name} twice")
                    seen.add(member_name)
                    yield member_name, self._read_member(member_name, member, tar, budget)
        except _TooLarge as e:
            raise self.corrupt(name, e) from None
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

    def read_numbered(self, name, members):
        """{member: [(line number, stripped line)]} of the non-empty, non-comment lines of
        text members of an archive (line numbers from 1, as an editor shows them)."""
        raw = self.read_members(name, members)
        try:
            return {k: [(i, ln.strip()) for i, ln in enumerate(v.decode("utf-8").splitlines(), 1)
                        if ln.strip() and not ln.startswith("#")] for k, v in raw.items()}
        except UnicodeDecodeError as e:
            raise self.corrupt(name, f"a text member is not UTF-8: {e}") from None

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
            for member_name, member, tar, budget in self._members(name):
                listing.append((member_name.rstrip("/"), member.isdir()))
                if member.isfile() and member_name in members:
                    if member_name in found:
                        raise _TooLarge(f"it holds {member_name} twice")
                    found[member_name] = self._read_member(member_name, member, tar, budget)
        except _TooLarge as e:
            raise self.corrupt(name, e) from None
        except _READ_ERRORS as e:
            raise self.corrupt(name, f"{type(e).__name__}: {e}") from None
        missing = sorted(members - set(found))
        if missing:
            raise self.corrupt(name, f"it has no {missing[0]}")
        return listing, found

    def load_mat(self, name, data=None, inside=None):
        """scipy.io.loadmat of a .mat file in manual_dir (or of `data`, a member of `inside`),
        read once (kept), within the bounds of the module docstring."""
        key = (name, inside)
        if key not in self._mats:
            self._mats[key] = self._read_mat(name, data, inside)
        return self._mats[key]

    def _read_mat(self, name, data, inside):
        try:
            if data is None:
                with self._open(name) as f:
                    data = f.read(MAX_MAT_BYTES + 1)
            if len(data) > MAX_MAT_BYTES:
                raise _TooLarge(f"{name} is larger than {MAX_MAT_BYTES:,} bytes")
            budget = _Budget(MAT_RATIO * len(data) + MAT_FLOOR, f"{name} ({len(data):,} bytes)")
            return scipy.io.loadmat(io.BytesIO(inflate_mat(data, budget)), squeeze_me=True)
        except UserError:
            raise
        except _TooLarge as e:
            raise self.corrupt(inside or name, e) from None
        except Exception as e:  # noqa: BLE001 (scipy raises many types on a bad file)
            raise self.corrupt(inside or name, f"cannot read {name}: {type(e).__name__}: "
                               f"{e}") from None

    def field(self, name, mat, key):
        """mat[key] as a 1-d array, or a damaged-file UserError naming the missing key."""
        if key not in mat:
            raise self.corrupt(name, f"it has no {key!r} entry")
        return np.atleast_1d(mat[key])

    def integer_field(self, name, mat, key):
        """mat[key] as a 1-d int64 array; a damaged-file UserError naming the file, the entry
        and the first value that is not an integer (text, NaN, 2.5) or a shape that is not 1-d."""
        values = self.field(name, mat, key)
        if values.ndim != 1:
            raise self.corrupt(name, f"its {key!r} entry has shape {values.shape}, not a list")
        if values.dtype.kind in "iu":
            return values.astype(np.int64)
        if values.dtype.kind == "f":
            bad = ~np.isfinite(values) | (values != np.round(values))
        else:  # text, objects, booleans: none is a label or an image id
            bad = np.ones(values.shape, bool)
        if bad.any():
            i = int(np.argmax(bad))
            value = values[i].item() if isinstance(values[i], np.generic) else values[i]
            raise self.corrupt(name, f"its {key!r} entry holds {value!r:.40} at position "
                               f"{i + 1}, not an integer")
        if np.abs(values).max(initial=0) >= 2 ** 62:
            raise self.corrupt(name, f"its {key!r} entry holds numbers too large for ids")
        return values.astype(np.int64)


def ascii_digits(text):
    """Whether `text` is a non-empty run of ASCII digits ('²' and '٣' are digits to str.isdigit,
    but int() refuses the first)."""
    return text.isascii() and text.isdigit()


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
