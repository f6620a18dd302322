"""Fashion-MNIST (Xiao et al., 2017): 28x28 grey images of 10 kinds of clothing, 60,000 train /
10,000 test, read from its four official gzip'd idx files.

Official files in data.manual_dir (Debian / Ubuntu: `apt-get install dataset-fashion-mnist`
puts them in /usr/share/datasets/fashion-mnist):
    train-images-idx3-ubyte.gz   (60,000, 28, 28) pixels, 0 = background
    train-labels-idx1-ubyte.gz   (60,000,) labels 0..9
    t10k-images-idx3-ubyte.gz    (10,000, 28, 28)
    t10k-labels-idx1-ubyte.gz    (10,000,)
An idx file is a big-endian magic number (0, 0, 0x08 = unsigned bytes, number of dims: 0x00000803
for images, 0x00000801 for labels), one big-endian uint32 per dim, then the values in C order.

Every byte is checked (docs/threat_model.md): a file must be a regular file no larger than the
official one can be, a well-formed gzip stream that decompresses to at most the official
file's size, with the right magic number, 28x28 images, no more items than the official file,
exactly as many bytes as its header declares, labels below 10, and as many labels as images.

`data.classes` keeps some classes, renumbered 0..k-1 in the order given (e.g. (0, 1, 2, 3, 4)
for an upstream task, (5, 6, 7, 8, 9) downstream); the test split is then every official test
image of those classes. D / D_val and the subset are drawn from the official training split as
for every dataset. The whole dataset is 55 MB of pixels, at the classifier's scale already: it
is served from memory, as the digits are (`create_pipeline`), not prepared and decoded.
"""
import gzip
import math
import os
import stat
import struct
import zlib

import numpy as np
from PIL import Image

from mgr_jax.data import archives, memory, protocol, real_augment
from mgr_jax.data.bounded_read import Budget, CHUNK, TooLarge
from mgr_jax.errors import UserError

DATASET = "fashion_mnist"
NUM_CLASSES = 10
SIDE = 28
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
# split: (images file, labels file, images in the official files)
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000)}
APT_DIR = "/usr/share/datasets/fashion-mnist"
# deflate stores incompressible data in blocks of up to 65,535 bytes with 5 bytes of header
# each (0.008 %): a file larger than 1 % over its largest possible content, + 64 KiB for the
# gzip header's optional fields, is not an official one whatever it holds, and is refused
# before it is read (nor can empty gzip members then make the read long).
_GZIP_OVERHEAD = 1.01
# Errors a damaged gzip stream raises while it is read (BadGzipFile is an OSError).
_GZIP_ERRORS = (OSError, EOFError, zlib.error)


def _damaged(path, why):
    return UserError(f"{DATASET}: {path} is damaged or not the official file ({why}); download it "
                     f"again into {archives.where(os.path.dirname(path))}")


def check_files(manual_dir):
    """UserError, before anything is read, unless the four official files are regular files."""
    every = [name for images, labels, _ in FILES.values() for name in (images, labels)]
    if not manual_dir:
        raise UserError(f"{DATASET}: data.manual_dir is empty; set it to the folder that holds "
                        f"the official files {', '.join(every)} ({APT_DIR} after `apt-get "
                        f"install dataset-fashion-mnist`; see {archives.DOCS})")
    for name in every:
        path = os.path.join(manual_dir, name)
        problem = archives.non_regular(path)
        if problem == "missing":
            raise UserError(f"{DATASET}: {path} not found; put the official file {name} in "
                            f"{archives.where(manual_dir)} (`apt-get install "
                            f"dataset-fashion-mnist` puts the four files in {APT_DIR})")
        if problem:
            raise UserError(f"{DATASET}: {path} is {problem}, not the official file {name}; put "
                            f"the file itself in {archives.where(manual_dir)}")


def _inflate(path, limit):
    """The decompressed bytes of gzip file `path`: at most `limit` (TooLarge past it; a file
    that is not a regular file any more, or cannot be opened, is a UserError)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # never blocks, even on a FIFO
    except OSError as e:
        raise _damaged(path, f"cannot open it: {e.strerror}") from None
    with os.fdopen(fd, "rb") as raw:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _damaged(path, "it is not a regular file")
        most = int(limit * _GZIP_OVERHEAD) + (64 << 10)
        if info.st_size > most:
            raise TooLarge(f"it is {info.st_size:,} bytes, more than the {most:,} that the "
                           "official file's gzip stream can take")
        budget, out = Budget(limit, f"its gzip stream ({info.st_size:,} bytes)"), bytearray()
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            while piece := stream.read(CHUNK):
                budget.charge(len(piece))
                out += piece
    return bytes(out)


def _read_idx(path, magic, item_shape, max_count, what):
    """The idx file `path` as a uint8 array (count,) + item_shape, every header field checked
    (`what`: the items' name in messages, "images" or "labels")."""
    header = 4 + 4 * (1 + len(item_shape))
    try:
        data = _inflate(path, header + max_count * math.prod(item_shape))
    except TooLarge as e:
        raise _damaged(path, e) from None
    except _GZIP_ERRORS as e:
        raise _damaged(path, f"not a well-formed gzip file: {type(e).__name__}: {e}") from None
    if len(data) < header:
        raise _damaged(path, f"it decompresses to {len(data)} bytes, fewer than the "
                       f"{header}-byte idx header of {what}")
    found, *dims = struct.unpack_from(f">{header // 4}I", data)
    if found != magic:
        raise _damaged(path, f"its idx magic number is 0x{found:08x}, not 0x{magic:08x} "
                       f"({what}: unsigned bytes, {len(dims)} dim{'s' * (len(dims) > 1)})")
    count, shape = dims[0], tuple(dims[1:])
    if shape != item_shape:
        raise _damaged(path, f"its {what} are {'x'.join(map(str, shape))}, not "
                       f"{'x'.join(map(str, item_shape))}")
    if not 1 <= count <= max_count:
        raise _damaged(path, f"its header declares {count:,} {what}; the official file has "
                       f"{max_count:,}")
    want = count * math.prod(item_shape)
    if len(data) - header != want:
        raise _damaged(path, f"it holds {len(data) - header:,} bytes after its header, which "
                       f"declares {count:,} {what} ({want:,} bytes)")
    return np.frombuffer(data, np.uint8, offset=header).reshape((count,) + item_shape)


def read_split(manual_dir, split):
    """(images (N, 28, 28) uint8, labels (N,) int32) of the official "train" or "test" files."""
    images_name, labels_name, max_count = FILES[split]
    images_path = os.path.join(manual_dir, images_name)
    labels_path = os.path.join(manual_dir, labels_name)
    images = _read_idx(images_path, IMAGES_MAGIC, (SIDE, SIDE), max_count, "images")
    labels = _read_idx(labels_path, LABELS_MAGIC, (), max_count, "labels")
    bad = labels >= NUM_CLASSES
    if bad.any():
        i = int(np.argmax(bad))
        raise _damaged(labels_path, f"label {labels[i]} at position {i:,} is outside "
                       f"0..{NUM_CLASSES - 1}")
    if len(images) != len(labels):
        raise UserError(f"{DATASET}: {images_path} holds {len(images):,} images but "
                        f"{labels_path} {len(labels):,} labels; they are not a pair of official "
                        f"files: download both again into {archives.where(manual_dir)}")
    return images, labels.astype(np.int32)


class IdxSource:
    """Random access to one split's images held in memory: `images` (N, 28, 28) uint8, `labels`,
    `keys` ("train/00042": the position in the official file), and `read(i)`, the image as a
    binary PGM (what the grain pipeline decodes: any `archives.DatasetSplits` source reads
    encoded bytes)."""

    def __init__(self, split, images, labels, positions):
        self.images, self.labels = images, np.asarray(labels, np.int32)
        self.keys = [f"{split}/{p:05d}" for p in positions]  # sorted = the official order

    def __len__(self):
        return len(self.labels)

    def read(self, i):
        return b"P5 %d %d 255\n" % (SIDE, SIDE) + self.images[int(i)].tobytes()

    def describe(self, i):
        return self.keys[int(i)]


def load(config):
    """The official splits, `data.classes` kept and renumbered: `archives.DatasetSplits`."""
    manual_dir = os.path.abspath(config.data.manual_dir) if config.data.manual_dir else ""
    check_files(manual_dir)
    classes = tuple(config.data.get("classes", ())) or tuple(range(NUM_CLASSES))
    new_label = np.full(NUM_CLASSES, -1, np.int32)
    new_label[list(classes)] = np.arange(len(classes))
    sources = {}
    for split in FILES:
        images, labels = read_split(manual_dir, split)
        kept = np.flatnonzero(new_label[labels] >= 0)
        sources[split] = IdxSource(split, images[kept], new_label[labels[kept]], kept)
    train, test = sources["train"], sources["test"]
    return archives.DatasetSplits(
        name=DATASET, class_names=[CLASS_NAMES[c] for c in classes],
        train_source=train, train_indices=np.arange(len(train)),
        test_source=test, test_indices=np.arange(len(test)))


def rgb01(images, size):
    """uint8 grey (N, 28, 28) -> float32 (N, size, size, 3) in [0, 1], the three channels one
    array seen three times (a read-only view: no copy). Other sides than 28 are resampled with
    PIL's bilinear filter, as the image datasets are."""
    grey = images.astype(np.float32) / 255.0
    if size != SIDE:
        grey = np.stack([np.asarray(Image.fromarray(x).resize((size, size), Image.BILINEAR))
                         for x in grey]) if len(grey) else np.zeros((0, size, size), np.float32)
    return np.broadcast_to(grey[..., None], grey.shape + (3,))


def create_pipeline(splits, config, shard=(0, 1)):
    """`memory.ArrayPipeline` over `load(config)`'s splits with the protocol's D / D_val and
    subset (drawn as the grain pipeline draws them: same indices for the same split_seed)."""
    data = config.data
    train, test = splits.train_source, splits.test_source
    d_local, val_local = protocol.protocol_splits(
        train.labels[splits.train_indices], val_fraction=data.val_fraction,
        subset_fraction=data.subset_fraction, seed=data.split_seed)

    def part(source, idx):
        return memory.ArraySplit(rgb01(source.images[idx], data.image_size), source.labels[idx])

    pipeline = memory.ArrayPipeline(
        splits.name, splits.num_classes, part(train, splits.train_indices[d_local]),
        part(train, splits.train_indices[val_local]), part(test, splits.test_indices),
        batch_size=config.batch_size, eval_batch_size=config.eval_batch_size, seed=config.seed,
        augment_fn=real_augment.array_augment_fn(data.augment), shard=shard)
    pipeline.class_names = list(splits.class_names)
    return pipeline
