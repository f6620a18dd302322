"""Storages and tensors of PyTorch checkpoints as numpy arrays, rebuilt from raw bytes.

Storage-type and dtype globals (`torch.FloatStorage`, `torch.float32`) stand for numpy dtypes;
`rebuild_tensor*` are the allow-listed stand-ins of torch's `_rebuild_*` functions: they view
a storage (1-D array) with size, stride and offset, checked against the storage's extent, and
return C-contiguous copies (bfloat16 widened to float32).
"""
import numpy as np

from converters.errors import FormatProblem


class StorageType:
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


def storage_array(buf, dtype, numel, big_endian=False):
    """Raw bytes -> 1-D numpy array (numel,) of `dtype` (bfloat16 widened to float32)."""
    numel = int(numel)
    itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
    if numel < 0 or len(buf) < numel * itemsize:
        raise FormatProblem(f"storage holds {len(buf)} bytes, {numel} x {itemsize} expected "
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


def tensor_from_storage(storage, storage_offset, size, stride):
    """A storage (1-D array) viewed with size/stride/offset -> a C-contiguous copy of shape size."""
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise FormatProblem(f"tensor built over {type(storage).__name__}, not a storage")
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or any(s < 0 for s in size + stride) or offset < 0:
        raise FormatProblem(f"bad tensor geometry: size {size}, stride {stride}, offset {offset}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.shape[0]:
        raise FormatProblem(f"tensor of size {size} stride {stride} offset {offset} reaches "
                             f"past its storage of {storage.shape[0]} elements")
    base = storage[offset:]
    view = np.lib.stride_tricks.as_strided(
        base, shape=size, strides=tuple(s * base.itemsize for s in stride), writeable=False)
    return np.array(view, order="C")


def rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """torch._utils._rebuild_tensor{,_v2}: (storage, offset, size, stride, ...) -> array."""
    return tensor_from_storage(storage, storage_offset, size, stride)


def rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    """torch._utils._rebuild_tensor_v3: an untyped (byte) storage reinterpreted as `dtype`."""
    if not isinstance(dtype, TorchDtype):
        raise FormatProblem(f"_rebuild_tensor_v3 given dtype {dtype!r}")
    raw = np.ascontiguousarray(storage).view(np.uint8)
    itemsize = 2 if dtype.dtype == "bfloat16" else np.dtype(dtype.dtype).itemsize
    typed = storage_array(raw.tobytes(), dtype.dtype, raw.shape[0] // itemsize)
    return tensor_from_storage(typed, storage_offset, size, stride)


def rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """torch._utils._rebuild_parameter{,_with_state}: a Parameter is just its data here."""
    return data


def rebuild_from_type_v2(func, new_type, args, state):
    """torch._tensor._rebuild_from_type_v2: tensor subclasses reduce to their plain tensor."""
    return func(*args)
