"""A small torch-free writer of PyTorch's checkpoint formats (zip, legacy, plain pickles).

For tests, benchmarks and synthetic checkpoints: numpy arrays become tensors; `Global`,
`Reduce`, `Instance` and `PersistentId` write those pickle constructs as they are; `Build`
(an object then BUILD with a state) and `Raw` (opcodes as given) write hostile payloads.
    save(path, obj, legacy=False), dumps_legacy(obj), dumps_plain(obj, protocol=4),
    fragment(obj, protocol=4): the opcodes of obj alone (no PROTO, no STOP)
"""
import collections
import io
import os
import struct
import zipfile

import numpy as np

from converters.torch_pickle import LEGACY_MAGIC, LEGACY_PROTOCOL


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


class Build:
    """`obj`, then `state` and BUILD: what pickle writes to give an object its state."""

    def __init__(self, obj, state):
        self.obj, self.state = obj, state


class Raw:
    """Pickle opcodes written as they are (e.g. a payload no Python object pickles to)."""

    def __init__(self, opcodes):
        self.opcodes = bytes(opcodes)


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
        elif isinstance(obj, Build):
            self._emit(obj.obj, out)
            self._emit(obj.state, out)
            w(b"b")  # BUILD
        elif isinstance(obj, Raw):
            w(obj.opcodes)
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
    for header in (LEGACY_MAGIC, LEGACY_PROTOCOL,
                   {"protocol_version": LEGACY_PROTOCOL, "little_endian": True,
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


def fragment(obj, protocol=4, mode="plain"):
    """The opcodes that push `obj` (no PROTO header, no STOP), to splice into a pickle."""
    out = io.BytesIO()
    _Writer(protocol, mode)._emit(obj, out)
    return out.getvalue()


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
