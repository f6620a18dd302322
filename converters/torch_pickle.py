"""Read PyTorch checkpoints and pickles without torch, without running code from the file, and
without reading outside a buffer or allocating more than the file justifies.

Three formats are understood, told apart by the file's first bytes:

* the zip format of `torch.save` (PyTorch >= 1.6): `<archive>/data.pkl` plus one record
  `<archive>/data/<key>` of raw bytes per storage, persistent ids
  `('storage', storage_type, key, location, numel)`;
* the legacy format of `torch.save(..., _use_new_zipfile_serialization=False)`: five pickles
  (magic number, protocol version 1001, sys_info, the object, the list of storage keys) followed
  by each storage as an 8-byte element count and its raw bytes;
* plain pickles such as StyleGAN2-ADA / EDM `network-snapshot-*.pkl`, where each storage is
  `torch.storage._load_from_bytes(b)` with `b` a legacy-format stream.

An xz-compressed file of any of these is decompressed first. Tensors come back as numpy arrays
(C-contiguous copies honouring size, stride and storage offset; bfloat16 widened to float32);
a bare storage comes back as a 1-D array. Callers extend the allow-list of globals with
`extra_globals={"module.qualname": obj}`; `record_object(name)` makes an inert stand-in class
for module classes whose trees a converter walks (see its docstring).

What the reader refuses (docs/threat_model.md):
* a path that is not a regular file (a FIFO, a device, a directory), before it is opened;
* any global outside the allow-list (`UnsafePickleError`, naming it; nothing is imported);
* calls of anything but allow-listed callables and stand-in classes; `numpy.ndarray(...)` and
  builtin types asked to allocate from a number (`bytearray(2**40)`) or to copy without limit;
* BUILD (a state), SETITEM(S), APPEND(S) and ADDITEMS on anything but the containers, records
  and stand-in instances the pickle itself made: no opcode changes an allowed object;
* a tensor over anything but a storage read from the file, or reaching outside it;
* more materialised bytes (decompressed xz or zip data, storages, tensors, copies) than
  `Budget.RATIO` x the file's size + `Budget.FLOOR`, checked before each allocation;
* containers nested deeper than `MAX_NESTING`, extension codes, storages nested in storages.
Every failure, MemoryError and RecursionError included, is one `CheckpointFormatError` line.

Public API:
    load(path, extra_globals=None) -> object
    loads_legacy_bytes(data, extra_globals=None) -> object
    record_object(name) -> class;  record_globals(*names) -> {name: class}
    RecordedObject, UnsafePickleError, CheckpointFormatError, MAX_NESTING

`converters.pickle_globals` holds the allow-list and its stand-ins, `converters.safe_unpickler`
the checked unpickler, `converters.torch_tensors` rebuilds storages, tensors and numpy arrays;
`converters.pickle_writer` writes the same formats without torch (tests, benchmarks).
"""
import io
import lzma
import os
import pickle
import zipfile

from converters import input_files
from converters import torch_tensors as tt
from converters.errors import CheckpointFormatError, FormatProblem, UnsafePickleError
from converters.pickle_globals import (
    RecordedObject,
    Stub,
    UnknownGlobal,
    base_globals,
    find_unknown_global,
    is_builtin_type,
    record_globals,
    record_object,
)
from converters.safe_unpickler import MAX_NESTING, Unpickler, check_nesting, plain_load

__all__ = ["CheckpointFormatError", "MAX_NESTING", "RecordedObject", "UnknownGlobal",
           "UnsafePickleError", "find_unknown_global", "load", "loads_legacy_bytes",
           "record_globals", "record_object"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_STORAGE_NESTING = 2  # _load_from_bytes inside _load_from_bytes (real files: 1)
_CHUNK = 1 << 22  # bytes per step of incremental decompression



# ---------------------------------------------------------------------------------------------
# The format readers


def _read_member(zf, name, budget):
    """One zip member's bytes, read incrementally after charging its declared size."""
    info = zf.getinfo(name)
    budget.charge(info.file_size, f"zip member {name}")
    buf = bytearray(info.file_size)
    view, pos = memoryview(buf), 0
    with zf.open(info) as fp:
        while pos < info.file_size:
            chunk = fp.read(min(_CHUNK, info.file_size - pos))
            if not chunk:
                raise FormatProblem(f"zip member {name} is truncated")
            view[pos:pos + len(chunk)] = chunk
            pos += len(chunk)
    return buf


def _unxz(f, budget):
    """The decompressed bytes of the xz stream(s) in `f`, charged as they come."""
    out, dec = io.BytesIO(), lzma.LZMADecompressor(lzma.FORMAT_XZ)
    while True:
        if dec.eof:
            data = dec.unused_data + f.read(_CHUNK)
            if not data.startswith(_XZ_MAGIC):
                return out.getvalue()  # what follows the last stream is ignored, as lzma does
            dec = lzma.LZMADecompressor(lzma.FORMAT_XZ)
        elif dec.needs_input:
            data = f.read(_CHUNK)
            if not data:
                raise FormatProblem("the xz stream is truncated")
        else:
            data = b""
        piece = dec.decompress(data, max_length=_CHUNK)
        budget.charge(len(piece), "the xz stream's decompressed data")
        out.write(piece)


def _is_legacy_head(head):
    """Whether a pickle starts with the legacy magic number (LONG1 of it, then STOP)."""
    i = 2  # PROTO n
    if head[i:i + 1] == pickle.FRAME:
        i += 9
    if head[i:i + 1] != pickle.LONG1:
        return False
    n = head[i + 1] if len(head) > i + 1 else 0
    value = int.from_bytes(head[i + 2:i + 2 + n], "little", signed=True)
    return value == LEGACY_MAGIC and head[i + 2 + n:i + 3 + n] in (pickle.STOP, pickle.MEMOIZE)


class _Reader:
    """One load: the allow-list (defaults + the caller's extras), the limits and the readers."""

    def __init__(self, extra_globals, input_bytes, stub_unknown=False):
        self.stub_unknown = stub_unknown  # unknown globals become inert UnknownGlobal records
        self.budget = tt.Budget(input_bytes)
        self.rebuilder = tt.Rebuilder(self.budget)
        self.globals = base_globals(self)
        self._from_bytes = {}  # id(bytes) -> (bytes, object): one result per bytes object
        self._storage_depth = 0
        extra_globals = dict(extra_globals or {})
        for key in extra_globals:
            if not isinstance(key, str) or "." not in key:
                raise TypeError(f"extra_globals keys are 'module.qualname' strings, "
                                f"got {key!r}")
        self.globals.update(extra_globals)
        self.caller_types = frozenset(v for v in extra_globals.values()
                                      if isinstance(v, type) and not is_builtin_type(v))

    def read_top(self, f):
        """Read `f` (any format) and check the nesting of what came out."""
        obj = self.read_any(f)
        check_nesting(obj)
        return obj

    def load_legacy_bytes(self, data):
        """torch.storage._load_from_bytes(b): a legacy stream in bytes -> its object."""
        if not isinstance(data, (bytes, bytearray)):
            raise FormatProblem(f"_load_from_bytes given a {type(data).__name__}, not bytes")
        cached = self._from_bytes.get(id(data))
        if cached is not None and cached[0] is data:
            return cached[1]
        if self._storage_depth >= _MAX_STORAGE_NESTING:
            raise FormatProblem("storages nested inside storages (_load_from_bytes)")
        self._storage_depth += 1
        try:
            obj = self.read_legacy(io.BytesIO(data))
        finally:
            self._storage_depth -= 1
        self._from_bytes[id(data)] = (data, obj)
        return obj

    def read_any(self, f, compressed=False):
        """Detect the format of seekable binary file `f` and read it."""
        head = f.read(512)
        f.seek(0)
        if not head:
            raise FormatProblem("empty file")
        if head.startswith(_XZ_MAGIC):
            if compressed:
                raise FormatProblem("an xz stream inside an xz stream")
            return self.read_any(io.BytesIO(_unxz(f, self.budget)), compressed=True)
        if head.startswith(_ZIP_MAGIC):
            return self.read_zip(f)
        if len(head) >= 262 and head[257:262] == b"ustar":
            raise FormatProblem("a tar-format checkpoint (PyTorch < 0.4) is not supported")
        if head[:1] == b"\x80":
            if _is_legacy_head(head):
                return self.read_legacy(f)
            return Unpickler(f, self, self.globals).load()
        raise FormatProblem(f"not a PyTorch checkpoint or pickle (starts with {head[:8]!r})")

    def read_zip(self, f):
        """torch.save zip format: data.pkl + data/<key> storage records."""
        try:
            zf = zipfile.ZipFile(f)
        except zipfile.BadZipFile as e:
            raise FormatProblem(f"not a readable zip archive ({e}); truncated or corrupt?")
        with zf:
            return self._read_zip_archive(zf)

    def _read_zip_archive(self, zf):
        names = set(zf.namelist())
        pkls = sorted((n for n in names if n == "data.pkl" or n.endswith("/data.pkl")),
                      key=lambda n: n.count("/"))
        if not pkls:
            what = ("a TorchScript archive (torch.jit.save), which is not supported"
                    if any(n.endswith("constants.pkl") for n in names)
                    else "a zip archive without data.pkl, not a torch.save checkpoint")
            raise FormatProblem(what)
        prefix = pkls[0][:-len("data.pkl")]
        big = (prefix + "byteorder" in names
               and bytes(_read_member(zf, prefix + "byteorder", self.budget)).strip() == b"big")
        records, storages = {}, {}

        def persistent(pid):
            if not isinstance(pid, tuple) or len(pid) < 5 or _str(pid[0]) != "storage":
                raise FormatProblem(f"unknown persistent id {tt.short_repr(pid)}")
            stype, key, numel = pid[1], _str(pid[2]), pid[4]
            if not isinstance(stype, tt.StorageType) or not isinstance(key, str):
                raise FormatProblem(f"persistent id {tt.short_repr(pid)} names no storage")
            if key not in records:  # each record is read once, whatever views it
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise FormatProblem(f"storage record {record} is missing")
                records[key] = _read_member(zf, record, self.budget)
            # Cache per (key, dtype): tensors sharing a storage share one array.
            if (key, stype.dtype) not in storages:
                storages[key, stype.dtype] = self.rebuilder.storage(
                    records[key], stype.dtype, numel, big)
            return storages[key, stype.dtype]

        pkl = io.BytesIO(_read_member(zf, pkls[0], self.budget))
        return Unpickler(pkl, self, self.globals, persistent).load()

    def read_legacy(self, f):
        """Legacy (non-zip) torch.save stream: 5 pickles, then each storage's count and bytes."""
        if plain_load(self, f) != LEGACY_MAGIC:
            raise FormatProblem("bad magic number: not a legacy torch.save stream")
        version = plain_load(self, f)
        if version != LEGACY_PROTOCOL:
            raise FormatProblem(f"unsupported legacy protocol version {tt.short_repr(version)}")
        sys_info = plain_load(self, f)
        little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
        start = f.tell()
        found = self._probe_legacy(f)
        data = self._legacy_records(f, found, bool(little))
        end = f.tell()
        f.seek(start)

        def persistent(pid):
            kind, _stype, key, _numel, view = _legacy_pid(pid)
            if kind == "module":
                return pid[1]
            storage = data[key]
            if view is not None:
                storage = _legacy_view(storage, view)
            return storage

        obj = Unpickler(f, self, self.globals, persistent).load()
        f.seek(end)
        return obj

    def _probe_legacy(self, f):
        """First pass over the object pickle: {key: (storage type, numel)} it uses.

        Each storage's element size is named only inside the object pickle, and the raw data
        comes after it; this pass runs with inert stubs (allow-list still enforced, nothing
        called), the second one builds tensors over the data.
        """
        found = {}

        def probe(pid):
            kind, stype, key, numel, _view = _legacy_pid(pid)
            if kind == "storage":
                found.setdefault(key, (stype, numel))
            return Stub()

        probe_globals = {k: (v if isinstance(v, tt.StorageType) else Stub)
                         for k, v in self.globals.items()}
        Unpickler(f, self, probe_globals, probe).load()
        return found

    def _legacy_records(self, f, found, little):
        """The storage records after the object pickle: {key: StorageArray}."""
        keys = plain_load(self, f)
        if not isinstance(keys, list):
            raise FormatProblem("storage key list missing after the object pickle")
        here = f.tell()
        total = f.seek(0, io.SEEK_END)
        f.seek(here)
        data = {}
        for key in keys:
            key = _str(key)
            if key not in found:
                raise FormatProblem(f"storage {tt.short_repr(key)} is listed but never used")
            stype = found[key][0]
            header = f.read(8)
            if len(header) < 8:
                raise FormatProblem(f"truncated before storage {key}")
            count = int.from_bytes(header, "little" if little else "big", signed=True)
            nbytes = count * stype.itemsize
            # A damaged count must not make us allocate more than the file still holds.
            if count < 0 or nbytes > total - f.tell():
                raise FormatProblem(f"truncated in storage {key}: {nbytes} bytes announced, "
                                    f"{total - f.tell()} left")
            self.budget.charge(nbytes, f"storage {key}")
            data[key] = self.rebuilder.storage(f.read(nbytes), stype.dtype, count,
                                               big_endian=not little)
        missing = sorted(set(found) - set(data))
        if missing:
            raise FormatProblem(f"storage record(s) {', '.join(missing[:5])} missing")
        return data


def _str(x):
    return x.decode("latin-1") if isinstance(x, bytes) else x


def _legacy_pid(pid):
    """Legacy persistent id -> (kind, storage type, key, numel, view metadata or None)."""
    if isinstance(pid, tuple) and pid and _str(pid[0]) == "module":
        return "module", None, None, None, None
    if not isinstance(pid, tuple) or len(pid) < 5 or _str(pid[0]) != "storage":
        raise FormatProblem(f"unknown persistent id {tt.short_repr(pid)}")
    stype, key = pid[1], _str(pid[2])
    if not isinstance(stype, tt.StorageType) or not isinstance(key, str):
        raise FormatProblem(f"persistent id {tt.short_repr(pid)} names no storage")
    view = pid[5] if len(pid) > 5 else None
    return "storage", stype, key, pid[4], view


def _legacy_view(storage, view):
    """A legacy view (view key, offset, size) of a storage, inside it."""
    if not isinstance(view, tuple) or len(view) != 3:
        raise FormatProblem(f"bad storage view {tt.short_repr(view)}")
    offset, size = tt._index(view[1], "view offset"), tt._index(view[2], "view size")
    if offset + size > storage.shape[0]:
        raise FormatProblem(f"storage view [{offset}, {offset + size}) reaches past its "
                            f"storage of {storage.shape[0]} elements")
    return storage[offset:offset + size]


# ---------------------------------------------------------------------------------------------
# Entry points


def _describe(e):
    if isinstance(e, FormatProblem):
        return str(e)
    if isinstance(e, EOFError):
        return "unexpected end of data (truncated file?)"
    if isinstance(e, MemoryError):
        return "out of memory while reading it (MemoryError)"
    if isinstance(e, RecursionError):
        return "nested too deeply to read (RecursionError)"
    msg = " ".join(str(e).split())[:200]
    return f"corrupt or not a checkpoint ({type(e).__name__}: {msg})"


def _read_guarded(name, read):
    """Run `read()`; map every failure to one line: UnsafePickleError or CheckpointFormatError
    naming `name`."""
    try:
        return read()
    except UnsafePickleError as e:
        if "(in " in str(e):
            raise
        raise UnsafePickleError(f"{e} (in {name})") from None
    except CheckpointFormatError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a hostile file causes is a format error
        message = f"{name}: {_describe(e)}"
    raise CheckpointFormatError(message)


def load(path, extra_globals=None, stub_unknown=False):
    """Read a torch.save file (zip or legacy) or a plain pickle; tensors as numpy arrays.

    stub_unknown: a global outside the allow-list becomes an inert `UnknownGlobal` record
    (nothing is imported; calling or building it only records the arguments) instead of an
    UnsafePickleError. For files that carry parts a converter skips (StyleGAN-XL's
    discriminator): the caller must refuse the records in the part it uses
    (`find_unknown_global`).
    """
    # A regular file only: a FIFO would block, a device would be read without end.
    with input_files.open_regular(path, "checkpoint", CheckpointFormatError) as f:
        path = os.fsdecode(os.fspath(path))
        size = os.fstat(f.fileno()).st_size
        reader = _Reader(extra_globals, size, stub_unknown)
        return _read_guarded(path, lambda: reader.read_top(f))


def loads_legacy_bytes(data, extra_globals=None):
    """Read torch's legacy (non-zip) serialisation given as bytes; tensors as numpy arrays."""
    reader = _Reader(extra_globals, len(data))

    def read():
        obj = reader.load_legacy_bytes(bytes(data))
        check_nesting(obj)
        return obj

    return _read_guarded("<legacy bytes>", read)
