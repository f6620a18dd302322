"""Storages, tensors and numpy arrays of PyTorch checkpoints, rebuilt from raw bytes, with limits.

Storage-type and dtype globals (`torch.FloatStorage`, `torch.float32`) stand for numpy dtypes.
A storage is a `StorageArray`: a read-only 1-D view of bytes read from the file (a zip record,
a legacy record, the bytes of `_load_from_bytes`); nothing else, and never an array the pickle
describes, can be one. `Rebuilder` holds the allow-listed stand-ins of one load:

* torch's `_rebuild_*`: a tensor views its storage with size, stride and offset, all checked
  to lie inside the storage, and comes back as a C-contiguous copy (bfloat16 widened to
  float32) whose size is charged to the load's `Budget` before it is allocated;
* numpy's pickle form of arrays, dtypes and scalars (`_reconstruct` + its state, `dtype` + its
  state, `scalar`, `_frombuffer`, dill's `_create_array`), for plain number dtypes only, with
  the raw bytes required to be exactly as long as the shape says. `numpy.ndarray` itself is a
  marker that cannot be called: an array is never built from a shape, a buffer and strides.

`Budget` caps how many bytes one load may materialise (decompressed data, storages, tensors,
copies made by allowed callables): `RATIO` times the input's size plus `FLOOR`.
"""
import math
import operator
import re
import reprlib

import numpy as np

from converters.errors import FormatProblem

MAX_DIMS = 64  # numpy's own limit on the number of dimensions


class Budget:
    """The bytes one load may still materialise: `ratio` x the input's size + `floor`."""
    RATIO = 16
    FLOOR = 64 << 20

    def __init__(self, input_bytes, ratio=RATIO, floor=FLOOR):
        self.input_bytes = int(input_bytes)
        self.ratio, self.floor = ratio, floor
        self.limit = ratio * self.input_bytes + floor
        self.used = 0

    def charge(self, nbytes, what):
        """Count `nbytes` more; FormatProblem naming the limit when it would be passed."""
        nbytes = int(nbytes)
        if nbytes < 0 or self.used + nbytes > self.limit:
            raise FormatProblem(
                f"{what} needs {nbytes:,} bytes, past the reader's limit of {self.limit:,} bytes "
                f"for this file ({self.ratio} x its {self.input_bytes:,} bytes + "
                f"{self.floor >> 20} MiB, {self.used:,} used already)")
        self.used += nbytes


class StorageArray(np.ndarray):
    """A storage: a read-only 1-D array over bytes read from the file (see the module doc)."""


class StorageType:
    """What a storage-class global (e.g. `torch.FloatStorage`) stands for: its element dtype."""

    def __init__(self, name, dtype):
        self.name = name
        self.dtype = dtype  # a numpy dtype string, or "bfloat16"

    @property
    def itemsize(self):
        """Bytes per element in the file."""
        return _itemsize(self.dtype)

    def __repr__(self):
        return f"<storage type {self.name}>"


STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
    "BFloat16Storage": "bfloat16", "LongStorage": "<i8", "IntStorage": "<i4",
    "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
    "ComplexFloatStorage": "<c8", "ComplexDoubleStorage": "<c16", "UntypedStorage": "u1",
}

# torch dtype globals (named by `_rebuild_tensor_v3`, which is used with untyped storages).
TORCH_DTYPES = {
    "float32": "<f4", "float": "<f4", "float64": "<f8", "double": "<f8", "float16": "<f2",
    "half": "<f2", "bfloat16": "bfloat16", "int64": "<i8", "long": "<i8", "int32": "<i4",
    "int": "<i4", "int16": "<i2", "short": "<i2", "int8": "i1", "uint8": "u1", "bool": "?",
    "uint16": "<u2", "uint32": "<u4", "uint64": "<u8", "complex64": "<c8",
    "complex128": "<c16",
}


class TorchDtype:
    """What a torch dtype global (e.g. `torch.float32`) stands for."""

    def __init__(self, name, dtype):
        self.name = name
        self.dtype = dtype

    def __repr__(self):
        return f"<torch dtype {self.name}>"


class RefusedCallable:
    """An allow-listed name that may appear in a pickle but never be called (numpy.ndarray)."""

    def __init__(self, name, why):
        self.name, self.why = name, why

    def __call__(self, *args, **kwargs):
        raise FormatProblem(f"refusing to call {self.name}: {self.why}")

    def __repr__(self):
        return f"<{self.name}>"


NDARRAY = RefusedCallable(
    "numpy.ndarray", "an array is only rebuilt from numpy's own pickle form (_reconstruct and "
    "its raw bytes), never from a shape, a buffer and strides")


def _itemsize(dtype):
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def _repr_limits():
    """reprlib settings for messages: a few levels and items, short strings and numbers."""
    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother, r.maxlong = 3, 40, 60, 40
    return r


_REPR = _repr_limits()


def short_repr(obj, limit=80):
    """A repr for messages: one line, at most `limit` characters, never deep recursion."""
    try:
        text = _REPR.repr(obj)
    except Exception:  # noqa: BLE001 - a message must not fail
        text = f"<{type(obj).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _index(value, what):
    """A non-negative Python int from `value` (an int-like)."""
    try:
        value = operator.index(value)
    except TypeError:
        raise FormatProblem(f"{what} is {short_repr(value)}, not an integer") from None
    if value < 0:
        raise FormatProblem(f"{what} is negative ({value})")
    return value


def _dims(values, what):
    """A tuple of non-negative ints (a shape or strides), at most MAX_DIMS long."""
    if not isinstance(values, (tuple, list)) or len(values) > MAX_DIMS:
        raise FormatProblem(f"{what} {short_repr(values)} is not a tuple of at most "
                            f"{MAX_DIMS} ints")
    return tuple(_index(v, what) for v in values)


def _plain_dtype(dtype, what):
    """`dtype` if it is a numpy dtype of plain numbers (bool, int, float, complex)."""
    if (not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or dtype.fields is not None
            or dtype.subdtype is not None or dtype.hasobject):
        raise FormatProblem(f"{what}: dtype {short_repr(dtype)} is not a plain number type")
    return dtype


def _raw_bytes(data, what):
    """bytes from the raw data of a numpy pickle (bytes, bytearray, or a Python 2 str)."""
    if isinstance(data, str):
        return data.encode("latin-1")
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    raise FormatProblem(f"{what}: raw data is a {type(data).__name__}, not bytes")


def _frozen(array):
    """`array` as a read-only StorageArray."""
    out = array.view(StorageArray)
    out.flags.writeable = False
    return out


_NUMPY_DTYPE_NAMES = re.compile(r"[<>|=]?(b1|\?|[iu][1248]|f[248]|c8|c16)")


class Rebuilder:
    """The allow-listed stand-ins of torch's and numpy's rebuild functions for one load."""

    def __init__(self, budget):
        self.budget = budget
        self._typed = {}  # (id(storage), dtype) -> (storage, typed StorageArray), for v3
        self._pending = {}  # id -> array / dtype made by the pickle, waiting for its state

    # --- storages and tensors -------------------------------------------------------------

    def storage(self, buf, dtype, numel, big_endian=False):
        """Raw bytes -> StorageArray (numel,) of `dtype` (bfloat16 widened to float32)."""
        numel = _index(numel, "storage size")
        itemsize = _itemsize(dtype)
        if len(buf) < numel * itemsize:
            raise FormatProblem(f"storage holds {len(buf)} bytes, {numel} x {itemsize} "
                                "expected (truncated?)")
        if dtype == "bfloat16":
            self.budget.charge(4 * numel, "widening a bfloat16 storage")
            raw = np.frombuffer(buf, ">u2" if big_endian else "<u2", count=numel)
            # bfloat16 is the upper half of a float32: shifting it up is exact.
            return _frozen((raw.astype(np.uint32) << 16).view(np.float32))
        dt = np.dtype(dtype)
        if big_endian and dt.itemsize > 1 and dt.kind != "b":
            self.budget.charge(numel * itemsize, "byte-swapping a big-endian storage")
            arr = np.frombuffer(buf, dt.newbyteorder(">"), count=numel)
            return _frozen(arr.astype(dt.newbyteorder("=")))
        return _frozen(np.frombuffer(buf, dt, count=numel))

    def tensor(self, storage, storage_offset, size, stride):
        """A storage viewed with size/stride/offset -> a C-contiguous copy of shape `size`."""
        if type(storage) is not StorageArray:
            raise FormatProblem(f"a tensor is built over {short_repr(storage)}, not over a "
                                "storage read from the file")
        size, stride = _dims(size, "tensor size"), _dims(stride, "tensor stride")
        offset = _index(storage_offset, "storage offset")
        if len(size) != len(stride):
            raise FormatProblem(f"tensor size {size} and stride {stride} differ in length")
        numel = math.prod(size)
        if numel == 0:
            return np.zeros(size, storage.dtype)
        stride = tuple(0 if n == 1 else s for n, s in zip(size, stride))  # never stepped
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.shape[0]:
            raise FormatProblem(f"tensor of size {size} stride {stride} offset {offset} reaches "
                                f"past its storage of {storage.shape[0]} elements")
        self.budget.charge(numel * storage.itemsize, f"a tensor of size {size}")
        base = np.asarray(storage)[offset:]
        view = np.lib.stride_tricks.as_strided(
            base, shape=size, strides=tuple(s * base.itemsize for s in stride), writeable=False)
        return np.array(view, order="C")

    def rebuild_tensor(self, storage, storage_offset, size, stride, *unused):
        """torch._utils._rebuild_tensor{,_v2}: (storage, offset, size, stride, ...) -> array."""
        return self.tensor(storage, storage_offset, size, stride)

    def rebuild_tensor_v3(self, storage, storage_offset, size, stride, requires_grad,
                          backward_hooks, dtype, metadata=None):
        """torch._utils._rebuild_tensor_v3: an untyped (byte) storage read as `dtype`."""
        if not isinstance(dtype, TorchDtype):
            raise FormatProblem(f"_rebuild_tensor_v3 given dtype {short_repr(dtype)}")
        return self.tensor(self._retyped(storage, dtype.dtype), storage_offset, size, stride)

    def _retyped(self, storage, dtype):
        """The bytes of `storage` as a StorageArray of `dtype` (once per storage and dtype)."""
        if type(storage) is not StorageArray:
            raise FormatProblem(f"a tensor is built over {short_repr(storage)}, not over a "
                                "storage read from the file")
        key = (id(storage), dtype)
        if key not in self._typed:
            raw = memoryview(np.ascontiguousarray(storage)).cast("B")
            typed = self.storage(raw, dtype, raw.nbytes // _itemsize(dtype))
            self._typed[key] = (storage, typed)  # keeps `storage` alive: its id stays unique
        return self._typed[key][1]

    def rebuild_parameter(self, data, requires_grad=False, backward_hooks=None, state=None):
        """torch._utils._rebuild_parameter{,_with_state}: a Parameter is just its data here."""
        return data

    def rebuild_from_type_v2(self, func, new_type, args, state):
        """torch._tensor._rebuild_from_type_v2: tensor subclasses reduce to their plain tensor."""
        if func not in (self.rebuild_tensor, self.rebuild_tensor_v3, self.rebuild_parameter):
            raise FormatProblem(f"_rebuild_from_type_v2 given {short_repr(func)}, not a tensor "
                                "rebuild function")
        if not isinstance(args, tuple):
            raise FormatProblem("_rebuild_from_type_v2 given arguments that are not a tuple")
        return func(*args)

    # --- numpy's pickle form ----------------------------------------------------------------

    def np_dtype(self, obj, align=False, copy=False):
        """numpy.dtype(name, align, copy) for plain number types: a fresh dtype (its state,
        e.g. the byte order, comes from the BUILD after it; see `build`)."""
        if not isinstance(obj, str) or not _NUMPY_DTYPE_NAMES.fullmatch(obj):
            raise FormatProblem(f"numpy.dtype({short_repr(obj)}) is not a plain number type")
        dtype = np.dtype(obj, False, True)  # copy: a state may change it, never numpy's own
        self._pending[id(dtype)] = dtype
        return dtype

    def np_reconstruct(self, subtype, shape, typecode):
        """numpy's `_reconstruct(ndarray, (0,), b'b')`: an empty array awaiting its state."""
        if subtype is not NDARRAY or shape not in ((0,), [0]) or typecode not in (b"b", "b"):
            raise FormatProblem(f"numpy _reconstruct({short_repr(subtype)}, {short_repr(shape)}, "
                                f"{short_repr(typecode)}) is not how numpy pickles an array")
        array = np.empty((0,), "b")
        self._pending[id(array)] = array
        return array

    def np_frombuffer(self, buf, dtype, shape, order):
        """numpy's `_frombuffer(buffer, dtype, shape, order)` (protocol-5 pickles)."""
        if not isinstance(buf, (bytes, bytearray)) or order not in ("C", "F"):
            raise FormatProblem("numpy _frombuffer given something other than bytes and C/F")
        dtype, shape = _plain_dtype(dtype, "numpy _frombuffer"), _dims(shape, "array shape")
        if len(buf) != math.prod(shape) * dtype.itemsize:
            raise FormatProblem(f"numpy _frombuffer: {len(buf)} bytes for shape {shape} of "
                                f"{dtype}")
        return np.frombuffer(buf, dtype).reshape(shape, order=order)

    def np_scalar(self, dtype, data=None):
        """numpy's `scalar(dtype, raw bytes)` for plain number types."""
        dtype = _plain_dtype(dtype, "numpy scalar")
        raw = _raw_bytes(data, "numpy scalar")
        if len(raw) != dtype.itemsize:
            raise FormatProblem(f"numpy scalar of {dtype} given {len(raw)} bytes")
        return np.frombuffer(raw, dtype)[0]

    def dill_create_array(self, f, args, state, npdict=None):
        """dill._dill._create_array, through the numpy stand-ins above (npdict ignored)."""
        if f not in (self.np_reconstruct, self.np_frombuffer) or not isinstance(args, tuple):
            raise FormatProblem(f"dill._dill._create_array called with {short_repr(f)}")
        array = f(*args)
        if state is not None:
            self.build(array, state)
        return array

    def is_pending(self, obj):
        """Whether `obj` is an array or dtype made here that still awaits its BUILD state."""
        return self._pending.get(id(obj)) is obj

    def build(self, obj, state):
        """Apply the BUILD state of a pending array or dtype (once), checked first."""
        if not self.is_pending(obj):
            raise FormatProblem(f"a state is given to {short_repr(obj)}, which takes none")
        del self._pending[id(obj)]
        if isinstance(obj, np.dtype):
            obj.__setstate__(self._dtype_state(state))
        else:
            obj.__setstate__(self._array_state(state))

    def _dtype_state(self, state):
        """A dtype's state (version, byte order, None x 3, ...) -> numpy's plain-type form."""
        if (not isinstance(state, tuple) or len(state) < 5 or state[0] not in (3, 4)
                or state[1] not in ("<", ">", "|", "=") or any(s is not None for s in state[2:5])):
            raise FormatProblem(f"numpy dtype state {short_repr(state)} is not a plain "
                                "number type's")
        return (3, state[1], None, None, None, -1, -1, 0)

    def _array_state(self, state):
        """An array's state ([version,] shape, dtype, is_fortran, raw bytes), checked."""
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise FormatProblem(f"numpy array state {short_repr(state)} is not (shape, dtype, "
                                "fortran, data)")
        shape, dtype, fortran, data = state[-4:]
        shape, dtype = _dims(shape, "array shape"), _plain_dtype(dtype, "numpy array")
        raw = _raw_bytes(data, "numpy array")
        if len(raw) != math.prod(shape) * dtype.itemsize:
            raise FormatProblem(f"numpy array of shape {shape} and {dtype} given {len(raw)} "
                                "bytes")
        self.budget.charge(len(raw), f"a numpy array of shape {shape}")
        return (1, shape, dtype, bool(fortran), raw)
