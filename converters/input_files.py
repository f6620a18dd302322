"""Opening the files a converter reads (checkpoints, kwargs JSON): regular files only.

A FIFO would block `open` until someone writes to it, a device (/dev/zero) would be read
without end, and an integer given as a path is a file descriptor to `open` (0 is standard
input). So a path must be a str / bytes / PathLike naming a regular file (links followed);
anything else is refused in one line before it is opened. The file is then opened without
blocking and checked again, so a FIFO swapped in meanwhile is refused too.
"""
import json
import os
import stat

from converters.errors import ConversionError
from converters.torch_tensors import short_repr

MAX_JSON_BYTES = 1 << 20  # a kwargs JSON file

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def file_kind(mode):
    """'a FIFO (named pipe)', 'a directory', ... for a stat mode that is not a regular file."""
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def regular_file(path, what="checkpoint", error=ConversionError):
    """`path` as a str if it names an existing regular file.

    FileNotFoundError when nothing is there; `error` for a value that is not a path, or a
    directory, FIFO, device or socket.
    """
    if isinstance(path, bool) or not isinstance(path, (str, bytes, os.PathLike)):
        raise error(f"{what} {short_repr(path)} is not a file path")
    path = os.fsdecode(os.fspath(path))
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except (OSError, ValueError) as e:
        raise error(f"{what} {path} cannot be read ({type(e).__name__}: {e})") from None
    if not stat.S_ISREG(mode):
        raise error(f"{what} {path} is {file_kind(mode)}, not a regular file")
    return path


def open_regular(path, what="checkpoint", error=ConversionError):
    """A binary file object of regular file `path` (see `regular_file`)."""
    path = regular_file(path, what, error)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    f = os.fdopen(fd, "rb")
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        f.close()
        raise error(f"{what} {path} is {file_kind(mode)}, not a regular file")
    return f


def read_json(path, what="kwargs JSON"):
    """The JSON object in regular file `path` (at most MAX_JSON_BYTES) as a dict;
    ConversionError (one line) for anything else."""
    with open_regular(path, what) as f:
        data = f.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise ConversionError(f"{what} {path} is larger than {MAX_JSON_BYTES:,} bytes")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ConversionError(f"{what} {path} is not valid JSON ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:120]})") from None
    if not isinstance(obj, dict):
        raise ConversionError(f"{what} {path}: expected a JSON object, found "
                              f"{type(obj).__name__}")
    return obj
