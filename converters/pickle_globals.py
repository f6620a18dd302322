"""The globals a checkpoint pickle may name: inert stand-ins for the classes a converter walks,
guarded versions of the builtins and stdlib callables pickles use, and the allow-list itself.

Nothing here imports or calls what a pickle names: a global is looked up in the allow-list
(`base_globals`) or refused by `converters.safe_unpickler`.
"""
import codecs
import collections

from converters import torch_tensors as tt
from converters.errors import FormatProblem

ITEM_BYTES = 64  # what one copied container item is charged



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


class UnknownGlobal(RecordedObject):
    """A global outside the allow-list, read with `load(..., stub_unknown=True)`: only named."""


def unknown_global(name):
    """The UnknownGlobal subclass standing for global `name`."""
    return type(name.rsplit(".", 1)[-1] or "Unknown", (UnknownGlobal,),
                {"name": name, "__module__": __name__})


def find_unknown_global(obj):
    """The name of the first UnknownGlobal (class or record) inside `obj`, or None.

    Walks containers and the records' arguments, state and items iteratively (a hostile tree
    may be deep).
    """
    seen, todo = set(), [obj]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, UnknownGlobal) or (isinstance(obj, type)
                                              and issubclass(obj, UnknownGlobal)):
            return obj.name
        if isinstance(obj, dict):
            todo.extend(obj.keys())
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            todo.extend(obj)
        elif isinstance(obj, RecordedObject):
            todo.extend([obj.args, obj.kwargs, obj.state, obj.items, obj.list_items])
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            todo.extend(vars(obj).values())
    return None


def record_globals(*names):
    """{name: record_object(name)} for each name, ready to pass as (part of) extra_globals."""
    return {name: record_object(name) for name in names}


class Stub:
    """Accepts every pickle operation and keeps nothing (the legacy format's first pass)."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return Stub()

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


INERT = (RecordedObject, Stub)


# ---------------------------------------------------------------------------------------------
# Guarded stand-ins of the builtins and stdlib callables a pickle may use


def _check_items(obj, budget, what):
    """Charge copying the items of `obj`, which must be a plain container."""
    if not isinstance(obj, (list, tuple, set, frozenset, dict)):
        raise FormatProblem(f"{what} of a {type(obj).__name__}: only of a list, tuple, set or "
                            "dict")
    budget.charge(ITEM_BYTES * len(obj), what)


def _check_bytes_source(args, budget, what):
    """bytes/bytearray(...) only copy bytes or encode a str; never allocate from a number."""
    if args and isinstance(args[0], int):
        raise FormatProblem(f"refusing {what}({tt.short_repr(args[0])}): it would allocate "
                            "memory from a number, not copy bytes in the file")
    if args and not isinstance(args[0], (bytes, bytearray, str, list, tuple)):
        raise FormatProblem(f"{what} of a {type(args[0]).__name__}")
    if args:
        budget.charge(len(args[0]) * (ITEM_BYTES if isinstance(args[0], (list, tuple)) else 1),
                      what)


def _check_scalar_args(args, what):
    """bool/int/float/complex/str(...) of at most two numbers or strings (no repr of trees)."""
    if len(args) > 2 or not all(isinstance(a, (int, float, complex, str)) for a in args):
        raise FormatProblem(f"{what} of {tt.short_repr(args)}: only of numbers or strings")


_COPYING = (tuple, list, set, frozenset, dict)
_ALLOCATING = (bytes, bytearray)
_SCALARS = (bool, int, float, complex, str)
_FREE = (slice, range, type(None))


def builtin_call(cls, args, kwargs, budget):
    """`cls(*args)` for a builtin type, refused where it could allocate without limit."""
    what = f"builtins.{cls.__name__}"
    if kwargs or len(args) > 3:
        raise FormatProblem(f"{what} called with {len(args)} arguments / keywords")
    if cls in _COPYING:
        if len(args) > 1:
            raise FormatProblem(f"{what} called with {len(args)} arguments")
        if args:
            _check_items(args[0], budget, what)
    elif cls in _ALLOCATING:
        _check_bytes_source(args, budget, what)
    elif cls in _SCALARS:
        _check_scalar_args(args, what)
    elif cls not in _FREE:
        raise FormatProblem(f"refusing to call {what} from a pickle")
    return cls(*args)


def is_builtin_type(obj):
    return type(obj) is type and obj.__module__ == "builtins"


def _ordered_dict(budget):
    """collections.OrderedDict(items=()): a new OrderedDict (the items copy is charged)."""

    def ordered_dict(items=()):
        _check_items(items, budget, "collections.OrderedDict")
        return collections.OrderedDict(items)

    return ordered_dict


def _codecs_encode(budget):
    """_codecs.encode as protocol-2 pickles use it for bytes: latin-1 only (charged)."""

    def encode(obj, encoding="utf-8", errors="strict"):
        if (not isinstance(obj, str) or not isinstance(encoding, str)
                or codecs.lookup(encoding).name != "iso8859-1" or errors != "strict"):
            raise FormatProblem(f"_codecs.encode with encoding {tt.short_repr(encoding)}")
        budget.charge(len(obj), "_codecs.encode")
        return obj.encode("latin-1")

    return encode


def _torch_device(kind, index=None):
    """torch.device(type[, index]) -> "type" or "type:index"."""
    if (not isinstance(kind, str) or len(kind) > 64
            or not (index is None or isinstance(index, int))):
        raise FormatProblem(f"torch.device({tt.short_repr(kind)}, {tt.short_repr(index)})")
    return kind if index is None else f"{kind}:{index}"


# ---------------------------------------------------------------------------------------------
# The allow-list


def base_globals(reader):
    """The default allow-list: {"module.qualname": safe object}."""
    rb = reader.rebuilder
    out = {
        "collections.OrderedDict": _ordered_dict(reader.budget),
        "torch._utils._rebuild_tensor": rb.rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": rb.rebuild_tensor,
        "torch._utils._rebuild_tensor_v3": rb.rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": rb.rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": rb.rebuild_parameter,
        "torch._tensor._rebuild_from_type_v2": rb.rebuild_from_type_v2,
        "torch.storage._load_from_bytes": reader.load_legacy_bytes,
        "torch.Size": tuple,
        "torch.device": _torch_device,
        "numpy.dtype": rb.np_dtype,
        "numpy.ndarray": tt.NDARRAY,
        "dill._dill._create_array": rb.dill_create_array,
        "_codecs.encode": _codecs_encode(reader.budget),
        "builtins.set": set, "builtins.frozenset": frozenset, "builtins.slice": slice,
        "builtins.complex": complex, "builtins.bytearray": bytearray,
    }
    for mod in ("numpy.core", "numpy._core"):  # numpy 2 writes numpy._core, numpy 1 numpy.core
        out[f"{mod}.multiarray._reconstruct"] = rb.np_reconstruct
        out[f"{mod}.multiarray.scalar"] = rb.np_scalar
        out[f"{mod}.numeric._frombuffer"] = rb.np_frombuffer
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
OLD_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


