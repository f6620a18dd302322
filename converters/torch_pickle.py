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

`converters.torch_tensors` rebuilds storages and tensors; `converters.pickle_writer` writes the
same formats without torch (tests, benchmarks, synthetic checkpoints).
"""
import collections
import io
import lzma
import os
import pickle
import struct
import zipfile

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZIP_MAGIC = b"PK\x03\x04"


from converters import torch_tensors as tt
from converters.errors import CheckpointFormatError, FormatProblem, UnsafePickleError

__all__ = ["CheckpointFormatError", "RecordedObject", "UnsafePickleError", "load",
           "loads_legacy_bytes", "record_globals", "record_object"]

# Exceptions that a damaged stream can raise from inside the unpickler or zip reader.
_DAMAGE = (FormatProblem, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, lzma.LZMAError,
           struct.error, ValueError, KeyError, IndexError, TypeError, AttributeError,
           UnicodeDecodeError, OverflowError)


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
        raise FormatProblem(f"dill._dill._create_array called with {f!r}")
    array = f(*args)
    array.__setstate__(state)
    return array


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    """_codecs.encode as protocol-2 pickles use it for bytes: latin-1 only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(obj, str):
        raise FormatProblem(f"_codecs.encode with encoding {encoding!r}")
    return obj.encode("latin-1", errors)


def _base_globals(load_from_bytes):
    """The default allow-list: {"module.qualname": safe object}."""
    core = _numpy_core()
    out = {
        "collections.OrderedDict": collections.OrderedDict,
        "torch._utils._rebuild_tensor": tt.rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": tt.rebuild_tensor,
        "torch._utils._rebuild_tensor_v3": tt.rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": tt.rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": tt.rebuild_parameter,
        "torch._tensor._rebuild_from_type_v2": tt.rebuild_from_type_v2,
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
    for cls, dtype in tt.STORAGE_DTYPES.items():
        for mod in ("torch", "torch.cuda", "torch.storage"):
            out[f"{mod}.{cls}"] = tt.StorageType(f"{mod}.{cls}", dtype)
    out["torch._UntypedStorage"] = tt.StorageType("torch._UntypedStorage", "u1")
    for name, dtype in tt.TORCH_DTYPES.items():
        out[f"torch.{name}"] = tt.TorchDtype(name, dtype)
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
            raise FormatProblem(f"unexpected persistent id {pid!r} in a plain pickle")
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
            raise FormatProblem("empty file")
        if head.startswith(_XZ_MAGIC):
            return self.read_any(io.BytesIO(lzma.decompress(f.read())))
        if head.startswith(_ZIP_MAGIC):
            return self.read_zip(f)
        if len(head) >= 262 and head[257:262] == b"ustar":
            raise FormatProblem("a tar-format checkpoint (PyTorch < 0.4) is not supported")
        if head[:1] == b"\x80":
            if _starts_with_long(head):
                try:
                    is_legacy = _plain_load(f) == LEGACY_MAGIC
                except Exception:  # noqa: BLE001 - any failure here only means "not legacy"
                    is_legacy = False
                f.seek(0)
                if is_legacy:
                    return self.read_legacy(f)
            return _Unpickler(f, self.globals).load()
        raise FormatProblem(f"not a PyTorch checkpoint or pickle (starts with {head[:8]!r})")

    def read_zip(self, f):
        """torch.save zip format: data.pkl + data/<key> storage records."""
        try:
            zf = zipfile.ZipFile(f)
        except zipfile.BadZipFile as e:
            raise FormatProblem(f"not a readable zip archive ({e}); truncated or corrupt?")
        with zf:
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
                   and zf.read(prefix + "byteorder").strip() == b"big")
            storages = {}

            def persistent(pid):
                if not isinstance(pid, tuple) or len(pid) < 5 or _str(pid[0]) != "storage":
                    raise FormatProblem(f"unknown persistent id {pid!r}")
                stype, key, _location, numel = pid[1], _str(pid[2]), pid[3], pid[4]
                if not isinstance(stype, tt.StorageType):
                    raise FormatProblem(f"persistent id names {stype!r}, not a storage type")
                # Cache per (key, dtype): tensors sharing a storage share one array.
                if (key, stype.dtype) not in storages:
                    record = f"{prefix}data/{key}"
                    if record not in names:
                        raise FormatProblem(f"storage record {record} is missing")
                    storages[key, stype.dtype] = tt.storage_array(zf.read(record), stype.dtype,
                                                                numel, big)
                return storages[key, stype.dtype]

            return _Unpickler(io.BytesIO(zf.read(pkls[0])), self.globals, persistent).load()

    def read_legacy(self, f):
        """Legacy (non-zip) torch.save stream: 5 pickles, then each storage's count and bytes."""
        if _plain_load(f) != LEGACY_MAGIC:
            raise FormatProblem("bad magic number: not a legacy torch.save stream")
        version = _plain_load(f)
        if version != LEGACY_PROTOCOL:
            raise FormatProblem(f"unsupported legacy protocol version {version!r}")
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

        probe_globals = {k: (v if isinstance(v, tt.StorageType) else _Stub)
                         for k, v in self.globals.items()}
        _Unpickler(f, probe_globals, probe).load()
        keys = _plain_load(f)
        if not isinstance(keys, list):
            raise FormatProblem("storage key list missing after the object pickle")
        data = {}
        for key in keys:
            key = _str(key)
            if key not in found:
                raise FormatProblem(f"storage {key} is listed but never used")
            stype, numel = found[key]
            header = f.read(8)
            if len(header) < 8:
                raise FormatProblem(f"truncated before storage {key}")
            count = int.from_bytes(header, "little" if little else "big", signed=True)
            nbytes = count * stype.itemsize
            # A damaged count must not make us allocate more than the file still holds.
            buf = f.read(nbytes) if 0 <= nbytes <= total - f.tell() else b""
            if count < 0 or len(buf) < nbytes:
                raise FormatProblem(f"truncated in storage {key}: {len(buf)} of {nbytes} bytes")
            data[key] = tt.storage_array(buf, stype.dtype, count, big_endian=not little)
        missing = sorted(set(found) - set(data))
        if missing:
            raise FormatProblem(f"storage record(s) {', '.join(missing[:5])} missing")
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
        raise FormatProblem(f"unknown persistent id {pid!r}")
    stype = pid[1]
    if not isinstance(stype, tt.StorageType):
        raise FormatProblem(f"persistent id names {stype!r}, not a storage type")
    view = pid[5] if len(pid) > 5 else None
    return "storage", stype, _str(pid[2]), pid[4], view


def _starts_with_long(head):
    """Whether a pickle's first value is a LONG1 (as the legacy magic number is)."""
    i = 2  # PROTO n
    if len(head) > i and head[i] == 0x95:  # FRAME + 8-byte length (protocol >= 4)
        i += 9
    return len(head) > i and head[i] == 0x8A


def _describe(e):
    if isinstance(e, FormatProblem):
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


