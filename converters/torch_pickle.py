"""Read PyTorch checkpoints and pickles without torch and without running code from the file.

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
a bare storage comes back as a 1-D array. Unpickling goes through an allow-list of globals:
anything else raises `UnsafePickleError` when the pickle names it, so nothing outside the list is
ever imported or called. Callers extend the list with `extra_globals={"module.qualname": obj}`;
`record_object(name)` makes an inert stand-in class for module classes whose trees a converter
walks (see its docstring).

Public API:
    load(path, extra_globals=None) -> object
    loads_legacy_bytes(data, extra_globals=None) -> object
    record_object(name) -> class;  record_globals(*names) -> {name: class}
    RecordedObject, UnsafePickleError, CheckpointFormatError
    save(path, obj, legacy=False), dumps_legacy(obj), dumps_plain(obj) with the markers
    Storage, TensorView, Global, Reduce, Instance, PersistentId: a small torch-free writer of
    the same formats (numpy arrays become tensors), for tests, benchmarks and synthetic
    checkpoints.
"""
import collections
import io
import lzma
import os
import pickle
import struct
import zipfile

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZIP_MAGIC = b"PK\x03\x04"


class UnsafePickleError(Exception):
    """The pickle names a global outside the allow-list (nothing of it was imported or run)."""


class CheckpointFormatError(Exception):
    """The file is truncated, corrupt or not a PyTorch checkpoint / pickle."""


class _FormatProblem(Exception):
    """Internal: a format problem; `load` adds the file name and re-raises CheckpointFormatError."""


# Exceptions that a damaged stream can raise from inside the unpickler or zip reader.
_DAMAGE = (_FormatProblem, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, lzma.LZMAError,
           struct.error, ValueError, KeyError, IndexError, TypeError, AttributeError,
           UnicodeDecodeError, OverflowError)


# ---------------------------------------------------------------------------------------------
# Storages and tensors


class _StorageType:
    """What a storage-class global (e.g. `torch.FloatStorage`) stands for: its element dtype."""

    def __init__(self, name, dtype):
        self.name = name
        self.dtype = dtype  # a numpy dtype string, or "bfloat16"

    @property
    def itemsize(self):
        """Bytes per element in the file."""
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize

    def __repr__(self):
        return f"<storage type {self.name}>"


_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
    "BFloat16Storage": "bfloat16", "LongStorage": "<i8", "IntStorage": "<i4",
    "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
    "ComplexFloatStorage": "<c8", "ComplexDoubleStorage": "<c16", "UntypedStorage": "u1",
}

# torch dtype globals (named by `_rebuild_tensor_v3`, which is used with untyped storages).
_TORCH_DTYPES = {
    "float32": "<f4", "float": "<f4", "float64": "<f8", "double": "<f8", "float16": "<f2",
    "half": "<f2", "bfloat16": "bfloat16", "int64": "<i8", "long": "<i8", "int32": "<i4",
    "int": "<i4", "int16": "<i2", "short": "<i2", "int8": "i1", "uint8": "u1", "bool": "?",
    "uint16": "<u2", "uint32": "<u4", "uint64": "<u8", "complex64": "<c8",
    "complex128": "<c16",
}


class _TorchDtype:
    """What a torch dtype global (e.g. `torch.float32`) stands for."""

    def __init__(self, name, dtype):
        self.name = name
        self.dtype = dtype

    def __repr__(self):
        return f"<torch dtype {self.name}>"


def _storage_array(buf, dtype, numel, big_endian=False):
    """Raw bytes -> 1-D numpy array (numel,) of `dtype` (bfloat16 widened to float32)."""
    numel = int(numel)
    itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
    if numel < 0 or len(buf) < numel * itemsize:
        raise _FormatProblem(f"storage holds {len(buf)} bytes, {numel} x {itemsize} expected "
                             "(truncated?)")
    if dtype == "bfloat16":
        raw = np.frombuffer(buf, ">u2" if big_endian else "<u2", count=numel).astype(np.uint32)
        # bfloat16 is the upper half of a float32: shifting it up is exact.
        return (raw << 16).view(np.float32)
    dt = np.dtype(dtype)
    if big_endian and dt.itemsize > 1 and dt.kind != "b":
        dt = dt.newbyteorder(">")
    arr = np.frombuffer(buf, dt, count=numel)
    return arr.astype(arr.dtype.newbyteorder("=")) if big_endian else arr


def _tensor_from_storage(storage, storage_offset, size, stride):
    """A storage (1-D array) viewed with size/stride/offset -> a C-contiguous copy of shape size."""
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise _FormatProblem(f"tensor built over {type(storage).__name__}, not a storage")
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or any(s < 0 for s in size + stride) or offset < 0:
        raise _FormatProblem(f"bad tensor geometry: size {size}, stride {stride}, offset {offset}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.shape[0]:
        raise _FormatProblem(f"tensor of size {size} stride {stride} offset {offset} reaches "
                             f"past its storage of {storage.shape[0]} elements")
    base = storage[offset:]
    view = np.lib.stride_tricks.as_strided(
        base, shape=size, strides=tuple(s * base.itemsize for s in stride), writeable=False)
    return np.array(view, order="C")


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """torch._utils._rebuild_tensor{,_v2}: (storage, offset, size, stride, ...) -> array."""
    return _tensor_from_storage(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    """torch._utils._rebuild_tensor_v3: an untyped (byte) storage reinterpreted as `dtype`."""
    if not isinstance(dtype, _TorchDtype):
        raise _FormatProblem(f"_rebuild_tensor_v3 given dtype {dtype!r}")
    raw = np.ascontiguousarray(storage).view(np.uint8)
    itemsize = 2 if dtype.dtype == "bfloat16" else np.dtype(dtype.dtype).itemsize
    typed = _storage_array(raw.tobytes(), dtype.dtype, raw.shape[0] // itemsize)
    return _tensor_from_storage(typed, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """torch._utils._rebuild_parameter{,_with_state}: a Parameter is just its data here."""
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    """torch._tensor._rebuild_from_type_v2: tensor subclasses reduce to their plain tensor."""
    return func(*args)


class _TypeMarker:
    """An allowed class that only appears as an argument (e.g. torch.Tensor in a rebuild)."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"<{self.name}>"


# ---------------------------------------------------------------------------------------------
# Inert stand-ins for classes a caller wants to walk


class RecordedObject:
    """Inert record of an object the pickle would have built; nothing of its class runs.

    `name` is the pickled global ("module.qualname"); `args` / `kwargs` the constructor or
    `__new__` arguments; `state` what BUILD gave (`__setstate__`, usually the module `__dict__`);
    `items` / `list_items` what SETITEMS / APPENDS added.
    """
    name = "?"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self.args, self.kwargs, self.state = args, kwargs, None
        self.items, self.list_items = {}, []
        return self

    def __init__(self, *args, **kwargs):
        pass  # REDUCE calls cls(*args): __new__ has recorded them already

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        """Record one APPENDS item."""
        self.list_items.append(value)

    def extend(self, values):
        """Record APPENDS items."""
        self.list_items.extend(values)

    def __repr__(self):
        return f"<recorded {self.name}>"


def record_object(name):
    """A RecordedObject subclass standing for global `name`, for `extra_globals`.

    Example: `load(p, extra_globals={"torch.nn.modules.container.ModuleDict":
    record_object("torch.nn.modules.container.ModuleDict")})` turns each pickled ModuleDict into
    an inert object whose `.state` is the dict of attributes the real one would have set.
    """
    short = name.rsplit(".", 1)[-1] or "Recorded"
    return type(short, (RecordedObject,), {"name": name, "__module__": __name__})


def record_globals(*names):
    """{name: record_object(name)} for each name, ready to pass as (part of) extra_globals."""
    return {name: record_object(name) for name in names}


class _Stub:
    """Accepts every pickle operation and keeps nothing (the legacy format's first pass)."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Stub()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        """Ignore."""

    def extend(self, values):
        """Ignore."""

    def add(self, value):
        """Ignore."""


# ---------------------------------------------------------------------------------------------
# The allow-list


def _numpy_core():
    # numpy 2 writes `numpy._core`, numpy 1 wrote `numpy.core`; both name the same functions.
    core = getattr(np, "_core", None)
    return core if core is not None else np.core


def _dill_create_array(f, args, state, npdict=None):
    """dill._dill._create_array, limited to numpy's own reconstructors (npdict ignored)."""
    core = _numpy_core()
    if f not in (core.multiarray._reconstruct, getattr(core.numeric, "_frombuffer", None)):
        raise _FormatProblem(f"dill._dill._create_array called with {f!r}")
    array = f(*args)
    array.__setstate__(state)
    return array


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    """_codecs.encode as protocol-2 pickles use it for bytes: latin-1 only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(obj, str):
        raise _FormatProblem(f"_codecs.encode with encoding {encoding!r}")
    return obj.encode("latin-1", errors)


def _base_globals(load_from_bytes):
    """The default allow-list: {"module.qualname": safe object}."""
    core = _numpy_core()
    out = {
        "collections.OrderedDict": collections.OrderedDict,
        "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
        "torch.storage._load_from_bytes": load_from_bytes,
        "torch.Size": tuple,
        "torch.device": str,
        "numpy.dtype": np.dtype,
        "numpy.ndarray": np.ndarray,
        "dill._dill._create_array": _dill_create_array,
        "_codecs.encode": _codecs_encode,
        "builtins.set": set, "builtins.frozenset": frozenset, "builtins.slice": slice,
        "builtins.complex": complex, "builtins.bytearray": bytearray,
    }
    for mod in ("numpy.core", "numpy._core"):
        out[f"{mod}.multiarray._reconstruct"] = core.multiarray._reconstruct
        out[f"{mod}.multiarray.scalar"] = core.multiarray.scalar
        if hasattr(core.numeric, "_frombuffer"):
            out[f"{mod}.numeric._frombuffer"] = core.numeric._frombuffer
    for cls, dtype in _STORAGE_DTYPES.items():
        for mod in ("torch", "torch.cuda", "torch.storage"):
            out[f"{mod}.{cls}"] = _StorageType(f"{mod}.{cls}", dtype)
    out["torch._UntypedStorage"] = _StorageType("torch._UntypedStorage", "u1")
    for name, dtype in _TORCH_DTYPES.items():
        out[f"torch.{name}"] = _TorchDtype(name, dtype)
    for name in ("torch.Tensor", "torch._tensor.Tensor", "torch.nn.parameter.Parameter"):
        out[name] = _TypeMarker(name)
    return out


# Python 2 pickles (and protocol < 3) name some modules by their old names.
_OLD_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _Unpickler(pickle.Unpickler):
    """pickle.Unpickler whose globals come only from `allowed`; persistent ids go to a callback."""

    def __init__(self, file, allowed, persistent=None):
        super().__init__(file, encoding="latin1")
        self._allowed = allowed
        self._persistent = persistent

    def find_class(self, module, name):
        module = _OLD_MODULES.get(module, module)
        key = f"{module}.{name}"
        if key in self._allowed:
            return self._allowed[key]
        raise UnsafePickleError(
            f"refusing to load {key}: not in the allow-list of converters.torch_pickle "
            f"(a caller may map it to a safe stand-in with extra_globals={{{key!r}: ...}})")

    def persistent_load(self, pid):
        if self._persistent is None:
            raise _FormatProblem(f"unexpected persistent id {pid!r} in a plain pickle")
        return self._persistent(pid)


def _plain_load(f):
    """Unpickle one pickle from `f` that may name no global at all (legacy-format headers)."""
    return _Unpickler(f, {}).load()


class _Reader:
    """One load: the allow-list (defaults + the caller's extras) and the format readers."""

    def __init__(self, extra_globals):
        self.globals = _base_globals(self.load_legacy_bytes)
        if extra_globals:
            for key, value in extra_globals.items():
                if not isinstance(key, str) or "." not in key:
                    raise TypeError(f"extra_globals keys are 'module.qualname' strings, "
                                    f"got {key!r}")
                self.globals[key] = value

    def load_legacy_bytes(self, data):
        """torch.storage._load_from_bytes(b): a legacy stream in bytes -> its object."""
        return self.read_legacy(io.BytesIO(bytes(data)))

    def read_any(self, f):
        """Detect the format of seekable binary file `f` and read it."""
        head = f.read(512)
        f.seek(0)
        if not head:
            raise _FormatProblem("empty file")
        if head.startswith(_XZ_MAGIC):
            return self.read_any(io.BytesIO(lzma.decompress(f.read())))
        if head.startswith(_ZIP_MAGIC):
            return self.read_zip(f)
        if len(head) >= 262 and head[257:262] == b"ustar":
            raise _FormatProblem("a tar-format checkpoint (PyTorch < 0.4) is not supported")
        if head[:1] == b"\x80":
            if _starts_with_long(head):
                try:
                    is_legacy = _plain_load(f) == _LEGACY_MAGIC
                except Exception:  # noqa: BLE001 - any failure here only means "not legacy"
                    is_legacy = False
                f.seek(0)
                if is_legacy:
                    return self.read_legacy(f)
            return _Unpickler(f, self.globals).load()
        raise _FormatProblem(f"not a PyTorch checkpoint or pickle (starts with {head[:8]!r})")

    def read_zip(self, f):
        """torch.save zip format: data.pkl + data/<key> storage records."""
        try:
            zf = zipfile.ZipFile(f)
        except zipfile.BadZipFile as e:
            raise _FormatProblem(f"not a readable zip archive ({e}); truncated or corrupt?")
        with zf:
            names = set(zf.namelist())
            pkls = sorted((n for n in names if n == "data.pkl" or n.endswith("/data.pkl")),
                          key=lambda n: n.count("/"))
            if not pkls:
                what = ("a TorchScript archive (torch.jit.save), which is not supported"
                        if any(n.endswith("constants.pkl") for n in names)
                        else "a zip archive without data.pkl, not a torch.save checkpoint")
                raise _FormatProblem(what)
            prefix = pkls[0][:-len("data.pkl")]
            big = (prefix + "byteorder" in names
                   and zf.read(prefix + "byteorder").strip() == b"big")
            storages = {}

            def persistent(pid):
                if not isinstance(pid, tuple) or len(pid) < 5 or _str(pid[0]) != "storage":
                    raise _FormatProblem(f"unknown persistent id {pid!r}")
                stype, key, _location, numel = pid[1], _str(pid[2]), pid[3], pid[4]
                if not isinstance(stype, _StorageType):
                    raise _FormatProblem(f"persistent id names {stype!r}, not a storage type")
                # Cache per (key, dtype): tensors sharing a storage share one array.
                if (key, stype.dtype) not in storages:
                    record = f"{prefix}data/{key}"
                    if record not in names:
                        raise _FormatProblem(f"storage record {record} is missing")
                    storages[key, stype.dtype] = _storage_array(zf.read(record), stype.dtype,
                                                                numel, big)
                return storages[key, stype.dtype]

            return _Unpickler(io.BytesIO(zf.read(pkls[0])), self.globals, persistent).load()

    def read_legacy(self, f):
        """Legacy (non-zip) torch.save stream: 5 pickles, then each storage's count and bytes."""
        if _plain_load(f) != _LEGACY_MAGIC:
            raise _FormatProblem("bad magic number: not a legacy torch.save stream")
        version = _plain_load(f)
        if version != _LEGACY_PROTOCOL:
            raise _FormatProblem(f"unsupported legacy protocol version {version!r}")
        sys_info = _plain_load(f)
        little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
        start = f.tell()
        total = f.seek(0, io.SEEK_END)
        f.seek(start)
        # Each storage's element size is named only inside the object pickle, and the raw data
        # comes after it. A first pass with inert stubs (allow-list still enforced, nothing
        # called) collects the storage types; the second pass builds tensors over the data.
        found = {}

        def probe(pid):
            kind, stype, key, numel, view = _legacy_pid(pid)
            if kind == "storage":
                found.setdefault(key, (stype, numel))
            return _Stub()

        probe_globals = {k: (v if isinstance(v, _StorageType) else _Stub)
                         for k, v in self.globals.items()}
        _Unpickler(f, probe_globals, probe).load()
        keys = _plain_load(f)
        if not isinstance(keys, list):
            raise _FormatProblem("storage key list missing after the object pickle")
        data = {}
        for key in keys:
            key = _str(key)
            if key not in found:
                raise _FormatProblem(f"storage {key} is listed but never used")
            stype, numel = found[key]
            header = f.read(8)
            if len(header) < 8:
                raise _FormatProblem(f"truncated before storage {key}")
            count = int.from_bytes(header, "little" if little else "big", signed=True)
            nbytes = count * stype.itemsize
            # A damaged count must not make us allocate more than the file still holds.
            buf = f.read(nbytes) if 0 <= nbytes <= total - f.tell() else b""
            if count < 0 or len(buf) < nbytes:
                raise _FormatProblem(f"truncated in storage {key}: {len(buf)} of {nbytes} bytes")
            data[key] = _storage_array(buf, stype.dtype, count, big_endian=not little)
        missing = sorted(set(found) - set(data))
        if missing:
            raise _FormatProblem(f"storage record(s) {', '.join(missing[:5])} missing")
        end = f.tell()
        f.seek(start)

        def persistent(pid):
            kind, stype, key, numel, view = _legacy_pid(pid)
            if kind == "module":
                return pid[1]
            storage = data[key]
            if view is not None:
                _view_key, offset, size = view
                storage = storage[int(offset):int(offset) + int(size)]
            return storage

        obj = _Unpickler(f, self.globals, persistent).load()
        f.seek(end)
        return obj


def _str(x):
    return x.decode("latin-1") if isinstance(x, bytes) else x


def _legacy_pid(pid):
    """Legacy persistent id -> (kind, storage type, key, numel, view metadata or None)."""
    if isinstance(pid, tuple) and pid and _str(pid[0]) == "module":
        return "module", None, None, None, None
    if not isinstance(pid, tuple) or len(pid) < 5 or _str(pid[0]) != "storage":
        raise _FormatProblem(f"unknown persistent id {pid!r}")
    stype = pid[1]
    if not isinstance(stype, _StorageType):
        raise _FormatProblem(f"persistent id names {stype!r}, not a storage type")
    view = pid[5] if len(pid) > 5 else None
    return "storage", stype, _str(pid[2]), pid[4], view


def _starts_with_long(head):
    """Whether a pickle's first value is a LONG1 (as the legacy magic number is)."""
    i = 2  # PROTO n
    if len(head) > i and head[i] == 0x95:  # FRAME + 8-byte length (protocol >= 4)
        i += 9
    return len(head) > i and head[i] == 0x8A


def _describe(e):
    if isinstance(e, _FormatProblem):
        return str(e)
    if isinstance(e, EOFError):
        return "unexpected end of data (truncated file?)"
    msg = str(e).splitlines()[0] if str(e) else ""
    return f"corrupt or not a checkpoint ({type(e).__name__}: {msg})"


def _read_guarded(name, read):
    """Run `read()`; map damage to CheckpointFormatError naming `name` (one line)."""
    try:
        return read()
    except (UnsafePickleError, CheckpointFormatError) as e:
        if isinstance(e, UnsafePickleError) and "(in " not in str(e):
            raise UnsafePickleError(f"{e} (in {name})") from None
        raise
    except _DAMAGE as e:
        raise CheckpointFormatError(f"{name}: {_describe(e)}") from e


def load(path, extra_globals=None):
    """Read a torch.save file (zip or legacy) or a plain pickle; tensors as numpy arrays."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise CheckpointFormatError(f"{path}: is a directory, not a checkpoint file")
    reader = _Reader(extra_globals)
    with open(path, "rb") as f:
        return _read_guarded(path, lambda: reader.read_any(f))


def loads_legacy_bytes(data, extra_globals=None):
    """Read torch's legacy (non-zip) serialisation given as bytes; tensors as numpy arrays."""
    reader = _Reader(extra_globals)
    return _read_guarded("<legacy bytes>", lambda: reader.load_legacy_bytes(data))


# ---------------------------------------------------------------------------------------------
# A small writer of the same formats (tests and benchmarks; no torch needed)


class Global:
    """A global reference to write: `Global("torch._utils", "_rebuild_tensor_v2")`."""

    def __init__(self, module, name):
        self.module, self.name = module, name


class Reduce:
    """`func(*args)` to write as REDUCE; `func` is usually a Global."""

    def __init__(self, func, args):
        self.func, self.args = func, tuple(args)


class Instance:
    """An instance of class `cls` (a Global) as pickle writes a plain object at protocol 2+:
    `cls.__new__(cls, *args)` (NEWOBJ), then BUILD with `state` (usually its `__dict__`).
    This is how a torch module that is not a persistent object (e.g. a ModuleDict) is stored."""

    def __init__(self, cls, state, args=()):
        self.cls, self.state, self.args = cls, state, tuple(args)


class PersistentId:
    """A persistent id (tuple) to write as BINPERSID."""

    def __init__(self, pid):
        self.pid = tuple(pid)


class Storage:
    """A bare storage to write (1-D array); also usable as the storage of TensorViews."""

    def __init__(self, array):
        self.data = np.ascontiguousarray(array).reshape(-1)


class TensorView:
    """A tensor over `storage` (a Storage or 1-D array): views of one storage object share it."""

    def __init__(self, storage, offset, size, stride):
        self.storage = storage if isinstance(storage, Storage) else Storage(storage)
        self._identity = storage
        self.offset, self.size, self.stride = int(offset), tuple(size), tuple(stride)


_NP_TO_STORAGE = {"float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage",
                  "int64": "LongStorage", "int32": "IntStorage", "int16": "ShortStorage",
                  "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
                  "complex64": "ComplexFloatStorage", "complex128": "ComplexDoubleStorage"}


class _Writer:
    """Emit pickle opcodes for plain values, Global/Reduce/PersistentId, storages and tensors.

    `mode` says how storages are written: "zip" / "legacy" as persistent ids (5 / 6 fields),
    "plain" as torch.storage._load_from_bytes(legacy bytes), as pickle.dump of a tensor does.
    """

    def __init__(self, protocol=2, mode="zip"):
        self.protocol, self.mode = protocol, mode
        self.storages = {}  # id(storage object) -> (key, storage type name, 1-D array, object)

    def dumps(self, obj):
        """obj -> one pickle (bytes)."""
        out = io.BytesIO()
        out.write(bytes([0x80, self.protocol]))
        self._emit(obj, out)
        out.write(b".")
        return out.getvalue()

    def _emit(self, obj, out):
        w = out.write
        if obj is None:
            w(b"N")
        elif obj is True or obj is False:
            w(b"\x88" if obj else b"\x89")
        elif isinstance(obj, int):
            if 0 <= obj < 256:
                w(b"K" + bytes([obj]))
            elif 0 <= obj < 65536:
                w(b"M" + obj.to_bytes(2, "little"))
            elif -2 ** 31 <= obj < 2 ** 31:
                w(b"J" + obj.to_bytes(4, "little", signed=True))
            else:
                raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
                w(b"\x8a" + bytes([len(raw)]) + raw)
        elif isinstance(obj, float):
            w(b"G" + struct.pack(">d", obj))
        elif isinstance(obj, str):
            raw = obj.encode("utf-8")
            w(b"X" + len(raw).to_bytes(4, "little") + raw)
        elif isinstance(obj, bytes):
            if self.protocol >= 3:
                w(b"B" + len(obj).to_bytes(4, "little") + obj)
            else:  # protocol 2 has no bytes opcode: Python writes _codecs.encode(str, latin1)
                self._emit(Reduce(Global("_codecs", "encode"),
                                  (obj.decode("latin-1"), "latin1")), out)
        elif isinstance(obj, Global):
            w(b"c" + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        elif isinstance(obj, Reduce):
            self._emit(obj.func, out)
            self._emit(obj.args, out)
            w(b"R")
        elif isinstance(obj, Instance):
            self._emit(obj.cls, out)
            self._emit(obj.args, out)
            w(b"\x81")  # NEWOBJ
            self._emit(obj.state, out)
            w(b"b")  # BUILD
        elif isinstance(obj, PersistentId):
            self._emit(obj.pid, out)
            w(b"Q")
        elif isinstance(obj, tuple):
            if not obj:
                w(b")")
            elif len(obj) <= 3:
                for x in obj:
                    self._emit(x, out)
                w(bytes([0x84 + len(obj)]))
            else:
                w(b"(")
                for x in obj:
                    self._emit(x, out)
                w(b"t")
        elif isinstance(obj, list):
            w(b"]")
            if obj:
                w(b"(")
                for x in obj:
                    self._emit(x, out)
                w(b"e")
        elif isinstance(obj, dict):
            if isinstance(obj, collections.OrderedDict):
                self._emit(Reduce(Global("collections", "OrderedDict"), ()), out)
            else:
                w(b"}")
            if obj:
                w(b"(")
                for k, v in obj.items():
                    self._emit(k, out)
                    self._emit(v, out)
                w(b"u")
        elif isinstance(obj, np.ndarray):
            arr = obj if obj.flags.c_contiguous else np.ascontiguousarray(obj)  # keeps 0-d
            strides = tuple(int(np.prod(arr.shape[i + 1:])) for i in range(arr.ndim))
            self._emit(TensorView(arr, 0, arr.shape, strides), out)
        elif isinstance(obj, TensorView):
            hooks = Reduce(Global("collections", "OrderedDict"), ())
            storage = self._storage(obj.storage, obj._identity)
            self._emit(Reduce(Global("torch._utils", "_rebuild_tensor_v2"),
                              (storage, obj.offset, obj.size, obj.stride, False, hooks)), out)
        elif isinstance(obj, Storage):
            self._emit(self._storage(obj, obj), out)
        else:
            raise TypeError(f"cannot write {type(obj).__name__}")

    def _storage(self, storage, identity):
        """A Storage -> what stands for it in the pickle (persistent id or _load_from_bytes)."""
        if id(identity) not in self.storages:
            dtype = str(storage.data.dtype)
            if dtype not in _NP_TO_STORAGE:
                raise TypeError(f"no torch storage type for dtype {dtype}")
            data = storage.data.astype(storage.data.dtype.newbyteorder("<"))
            # Keeping `identity` alive keeps its id() from being reused by another object.
            self.storages[id(identity)] = (str(len(self.storages)), _NP_TO_STORAGE[dtype],
                                           data, identity)
        key, stype, data, _ = self.storages[id(identity)]
        if self.mode == "plain":
            return Reduce(Global("torch.storage", "_load_from_bytes"),
                          (dumps_legacy(Storage(data)),))
        pid = ("storage", Global("torch", stype), key, "cpu", int(data.shape[0]))
        return PersistentId(pid + (None,) if self.mode == "legacy" else pid)


def dumps_legacy(obj):
    """obj (numpy arrays / TensorViews as tensors, Storages) -> bytes in torch's legacy format."""
    writer = _Writer(2, "legacy")
    main = writer.dumps(obj)
    out = io.BytesIO()
    for header in (_LEGACY_MAGIC, _LEGACY_PROTOCOL,
                   {"protocol_version": _LEGACY_PROTOCOL, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        out.write(writer.dumps(header))
    out.write(main)
    entries = list(writer.storages.values())
    out.write(writer.dumps([key for key, _, _, _ in entries]))
    for _key, _stype, data, _ in entries:
        out.write(int(data.shape[0]).to_bytes(8, "little", signed=True))
        out.write(data.tobytes())
    return out.getvalue()


def dumps_plain(obj, protocol=4):
    """obj -> a plain pickle as pickle.dump writes torch objects (storages via _load_from_bytes)."""
    return _Writer(protocol, "plain").dumps(obj)


def save(path, obj, legacy=False):
    """Write obj like torch.save would (zip format, or legacy with legacy=True); arrays->tensors."""
    path = os.fspath(path)
    if legacy:
        with open(path, "wb") as f:
            f.write(dumps_legacy(obj))
        return
    writer = _Writer(2, "zip")
    pkl = writer.dumps(obj)
    stem = os.path.splitext(os.path.basename(path))[0] or "archive"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{stem}/data.pkl", pkl)
        zf.writestr(f"{stem}/byteorder", "little")
        for key, _stype, data, _ in writer.storages.values():
            zf.writestr(f"{stem}/data/{key}", data.tobytes())
        zf.writestr(f"{stem}/version", "3\n")
