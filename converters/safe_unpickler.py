"""The unpickler of `converters.torch_pickle`: Python's pure-Python unpickler with the
allow-list, the memory budget and checked versions of every opcode that calls, changes an
object or allocates; and the nesting check of a loaded result.
"""
import collections
import io
import pickle

from converters import torch_tensors as tt
from converters.errors import FormatProblem, UnsafePickleError
from converters.pickle_globals import (
    INERT,
    ITEM_BYTES,
    OLD_MODULES,
    builtin_call,
    is_builtin_type,
    unknown_global,
)

MAX_NESTING = 200  # containers inside containers; real checkpoints stay well below 100



# ---------------------------------------------------------------------------------------------
# The unpickler


class _Bounded:
    """A binary file as the unpickler reads it: never asks for more bytes than remain."""

    def __init__(self, f):
        self._f = f
        here = f.tell()
        self._left = f.seek(0, io.SEEK_END) - here
        f.seek(here)

    def read(self, n=-1):
        """At most `n` bytes (short at the end; a huge `n` allocates nothing)."""
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def readline(self):
        """One line, at most what remains."""
        data = self._f.readline(self._left) if self._left > 0 else b""
        self._left -= len(data)
        return data


def _refuse(op, obj, why):
    raise FormatProblem(f"{op} on {tt.short_repr(obj)}: {why}")


class Unpickler(pickle._Unpickler):
    """The pure-Python unpickler with the allow-list, limits and checked opcodes.

    Globals come only from `allowed`; persistent ids go to `persistent`. The opcodes that call
    (REDUCE, NEWOBJ, INST, OBJ), change an object (BUILD, SETITEM(S), APPEND(S), ADDITEMS),
    allocate from a length (BYTEARRAY8) or nest hashable containers (TUPLE*, FROZENSET) are
    replaced by checked versions; extension codes are refused.
    """
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, reader, allowed, persistent=None):
        super().__init__(_Bounded(file), encoding="latin1")
        self._reader = reader
        self._allowed = allowed
        self._allowed_ids = {id(v) for v in allowed.values()}
        self._unknown = {}  # name -> UnknownGlobal class (with the reader's stub_unknown)
        self._caller_types = reader.caller_types
        self._persistent = persistent
        self._nested = {}  # id -> (tuple or frozenset, nesting depth); keeps them alive

    def find_class(self, module, name):
        module = OLD_MODULES.get(module, module)
        key = f"{module}.{name}"
        if key in self._allowed:
            return self._allowed[key]
        if self._reader.stub_unknown:
            return self._unknown.setdefault(key, unknown_global(key))
        raise UnsafePickleError(
            f"refusing to load {key}: not in the allow-list of converters.torch_pickle "
            f"(a caller may map it to a safe stand-in with extra_globals={{{key!r}: ...}})")

    def persistent_load(self, pid):
        if self._persistent is None:
            raise FormatProblem(f"unexpected persistent id {tt.short_repr(pid)} in a plain "
                                "pickle")
        return self._persistent(pid)

    # --- calls ----------------------------------------------------------------------------

    def _call(self, func, args, op):
        """func(*args) if the allow-list lets the pickle call `func`."""
        if not isinstance(args, tuple):
            _refuse(op, func, "its arguments are not a tuple")
        if is_builtin_type(func):
            result = builtin_call(func, args, {}, self._reader.budget)
        elif ((id(func) in self._allowed_ids and callable(func)) or isinstance(func, INERT)
              or (isinstance(func, type) and issubclass(func, INERT))):
            self._charge_args(func, args)
            result = func(*args)
        else:
            _refuse(op, func, "only allow-listed callables and stand-in classes can be called")
        self._note(result)
        return result

    def _new(self, cls, args, kwargs):
        """cls.__new__(cls, *args, **kwargs) for a stand-in class (NEWOBJ, NEWOBJ_EX)."""
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            _refuse("NEWOBJ", cls, "its arguments are not a tuple and a dict")
        if is_builtin_type(cls):
            return builtin_call(cls, args, kwargs, self._reader.budget)
        if not isinstance(cls, type) or not (id(cls) in self._allowed_ids
                                             or issubclass(cls, INERT)):
            _refuse("NEWOBJ", cls, "only allow-listed classes can be instantiated")
        self._charge_args(cls, args)
        return cls.__new__(cls, *args, **kwargs)

    def _charge_args(self, func, args):
        """Charge the items of container arguments: a callable may copy them, and the memo
        lets a pickle pass one big container to many calls."""
        n = sum(len(a) for a in args if isinstance(a, (list, tuple, dict, set, frozenset)))
        if n:
            self._reader.budget.charge(ITEM_BYTES * n, f"the arguments of {tt.short_repr(func)}")

    def _load_reduce(self):
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args, "REDUCE")

    def _load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, {}))
        self._note(self.stack[-1])

    def _load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))
        self._note(self.stack[-1])

    def _instantiate(self, klass, args):  # INST and OBJ (protocols 0 and 1)
        self.append(self._call(klass, tuple(args), "INST"))

    # --- changing objects -----------------------------------------------------------------

    def _target(self, op, kinds):
        """The object on top of the stack, if `op` may change it."""
        obj = self.stack[-1]
        if id(obj) in self._allowed_ids or isinstance(obj, type):
            _refuse(op, obj, "an allowed global or a class is never changed")
        if not isinstance(obj, kinds + INERT) and type(obj) not in self._caller_types:
            _refuse(op, obj, "only containers and stand-ins the pickle made can be filled")
        return obj

    def _load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if self._reader.rebuilder.is_pending(inst):
            self._reader.rebuilder.build(inst, state)
            return
        inst = self._target("BUILD", (collections.OrderedDict,))
        if isinstance(inst, INERT) or getattr(type(inst), "__setstate__", None) is not None:
            inst.__setstate__(state)
        else:
            _set_attributes(inst, state)

    def _load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._target("SETITEM", (dict,))[key] = value

    def _load_setitems(self):
        items = self.pop_mark()
        target = self._target("SETITEMS", (dict,))
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _load_append(self):
        value = self.stack.pop()
        self._target("APPEND", (list,)).append(value)

    def _load_appends(self):
        items = self.pop_mark()
        self._target("APPENDS", (list,)).extend(items)

    def _load_additems(self):
        items = self.pop_mark()
        target = self._target("ADDITEMS", (set,))
        for item in items:
            target.add(item)

    # --- allocation and nesting -----------------------------------------------------------

    def _load_bytearray8(self):
        n = int.from_bytes(self.read(8), "little")
        data = self.read(n)
        if len(data) != n:
            raise FormatProblem(f"BYTEARRAY8 of {n} bytes, {len(data)} left in the pickle")
        self.append(bytearray(data))

    def _refuse_extension(self):
        raise FormatProblem("pickle extension codes (EXT1/2/4) are not supported")

    def _depth(self, obj):
        entry = self._nested.get(id(obj))
        if entry is not None and entry[0] is obj:
            return entry[1]
        return 1 if type(obj) in (tuple, frozenset) else 0

    def _note(self, obj):
        """Record the nesting depth of a new tuple / frozenset; refuse it past MAX_NESTING
        (hashing a deeply nested tuple recurses in C and can overflow the stack)."""
        if type(obj) not in (tuple, frozenset) or not obj or id(obj) in self._nested:
            return
        depth = 1 + max(self._depth(x) for x in obj)
        if depth > MAX_NESTING:
            raise FormatProblem(f"containers nested more than {MAX_NESTING} deep")
        self._nested[id(obj)] = (obj, depth)

    def _noting(op):
        """Wrap the original handler of `op`: note the container it pushes."""
        original = pickle._Unpickler.dispatch[op[0]]

        def load(self):
            original(self)
            self._note(self.stack[-1])

        return load

    for _op in (pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3, pickle.FROZENSET):
        dispatch[_op[0]] = _noting(_op)
    for _op, _load in ((pickle.REDUCE, _load_reduce), (pickle.NEWOBJ, _load_newobj),
                       (pickle.NEWOBJ_EX, _load_newobj_ex), (pickle.BUILD, _load_build),
                       (pickle.SETITEM, _load_setitem), (pickle.SETITEMS, _load_setitems),
                       (pickle.APPEND, _load_append), (pickle.APPENDS, _load_appends),
                       (pickle.ADDITEMS, _load_additems), (pickle.BYTEARRAY8, _load_bytearray8),
                       (pickle.EXT1, _refuse_extension), (pickle.EXT2, _refuse_extension),
                       (pickle.EXT4, _refuse_extension)):
        dispatch[_op[0]] = _load
    del _op, _load, _noting


def _set_attributes(inst, state):
    """BUILD's default for a stand-in instance: set plain (non-dunder) attributes only."""
    slots = None
    if isinstance(state, tuple) and len(state) == 2:
        state, slots = state
    for part in (state, slots):
        if part is not None and not (isinstance(part, dict) and all(
                isinstance(k, str) and not k.startswith("__") for k in part)):
            _refuse("BUILD", inst, "the state is not a dict of plain attribute names")
    vars(inst).update(state or {})
    for key, value in (slots or {}).items():
        setattr(inst, key, value)


def plain_load(reader, f):
    """Unpickle one pickle from `f` that may name no global at all (legacy-format headers)."""
    return Unpickler(f, reader, {}).load()


# ---------------------------------------------------------------------------------------------
# Nesting of the result


def _children(obj):
    """What a recursive walk of a loaded tree visits below `obj` (None for a leaf)."""
    if isinstance(obj, dict):
        return list(obj.keys()) + list(obj.values())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    attrs = getattr(obj, "__dict__", None)
    if type(attrs) is dict and not isinstance(obj, type):
        return list(attrs.values())
    return None


def check_nesting(root, limit=MAX_NESTING):
    """Refuse a tree with a path of more than `limit` containers (iterative; cycles allowed)."""
    height = {}
    stack = [(root, iter(_children(root) or ()), 0)]
    on_path = {id(root)}
    while stack:
        obj, todo, best = stack[-1]
        child = next(todo, _DONE)
        if child is _DONE:
            stack.pop()
            on_path.discard(id(obj))
            height[id(obj)] = best + 1
            if stack:
                parent, ptodo, pbest = stack[-1]
                stack[-1] = (parent, ptodo, max(pbest, best + 1))
            continue
        if id(child) in on_path:
            continue  # a cycle: no deeper than what is on the path already
        known = height.get(id(child))
        if known is None:
            grandchildren = _children(child)
            if grandchildren is None:
                continue
            if len(stack) >= limit:
                raise FormatProblem(f"containers nested more than {limit} deep")
            stack.append((child, iter(grandchildren), 0))
            on_path.add(id(child))
            continue
        if len(stack) + known > limit:
            raise FormatProblem(f"containers nested more than {limit} deep")
        stack[-1] = (obj, todo, max(best, known))


_DONE = object()


