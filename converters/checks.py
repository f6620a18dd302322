"""What every converter checks in what a file (or a converted directory) says, before use.

* Settings are numbers of the right kind inside sane limits: an integer field must be an
  integer (an integral float is taken), a float field a finite number; sizes are bounded by the
  limits below, so a file cannot ask for a 2048 x 2048 generator or a 10**9-wide layer.
* Weights are finite: a NaN or infinite tensor is refused, naming it.
* A converted directory's meta.json names its kind and module_kwargs, which are checked as
  the file's settings were, and its variables fit that module (same tree, same shapes) and
  are finite, before anything uses them.
Every refusal is one `ConversionError` line naming the field, tensor or file.
"""
import math
import os

import jax
import numpy as np

from converters.errors import ConversionError
from converters.torch_tensors import short_repr
from mgr_jax import variables_io

MAX_RESOLUTION = 1024  # the largest official generator images (StyleGAN-XL, FastGAN)
MAX_CHANNELS = 4096  # feature channels of any layer; latent, style and embedding sizes
MAX_CLASSES = 100_000  # classes of a conditional generator
MAX_IMAGE_CHANNELS = 4
MAX_LAYERS = 256  # synthesis and mapping layers
MAX_FILTER_TAPS = 64  # taps of an FIR resampling filter
MAX_ATTENTION_RESOLUTION = 64  # self-attention memory grows as the fourth power of this


# ---------------------------------------------------------------------------------------------
# Settings


def integer(value, name, low, high):
    """`value` as a Python int in [low, high]; ConversionError naming `name` otherwise."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConversionError(f"{name}={short_repr(value)} is not an integer")
    if not low <= value <= high:
        raise ConversionError(f"{name}={short_repr(value)} is outside {low}..{high:,}")
    return value


def number(value, name, low, high, positive=False):
    """`value` as a finite float in [low, high] (and > 0 when `positive`)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConversionError(f"{name}={short_repr(value)} is not a number")
    try:
        value = float(value)
    except OverflowError:
        raise ConversionError(f"{name}={short_repr(value)} is not a finite number") from None
    if not math.isfinite(value):
        raise ConversionError(f"{name}={value} is not a finite number")
    if not low <= value <= high or (positive and value <= 0):
        where = f"in ({low:g}, {high:g}]" if positive else f"in [{low:g}, {high:g}]"
        raise ConversionError(f"{name}={value:g} is not {where}")
    return value


def boolean(value, name):
    """`value` as a bool (a bool, or the integer 0 / 1 as JSON and old pickles write them)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise ConversionError(f"{name}={short_repr(value)} is not a boolean")


def choice(value, name, choices):
    """`value` if it is one of `choices` (strings)."""
    if not isinstance(value, str) or value not in choices:
        raise ConversionError(f"{name}={short_repr(value)} is not one of {', '.join(choices)}")
    return value


def integers(values, name, low, high, max_len=MAX_LAYERS):
    """A sequence of ints in [low, high], at most `max_len` long, as a tuple."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if not isinstance(values, (list, tuple)) or len(values) > max_len:
        raise ConversionError(f"{name}={short_repr(values)} is not a list of at most "
                              f"{max_len} integers")
    return tuple(integer(v, f"{name}[{i}]", low, high) for i, v in enumerate(values))


# ---------------------------------------------------------------------------------------------
# Weights


def _path_name(path):
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def finite(variables, where):
    """`variables` (a pytree of arrays) if every float tensor is finite; else ConversionError
    naming the first tensor with a NaN or an infinity and how many it holds."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
        array = np.asarray(leaf)
        if array.dtype.kind in "biu":
            continue
        ok = np.isfinite(array)
        if not ok.all():
            bad = int(ok.size - np.count_nonzero(ok))
            raise ConversionError(f"{where}: tensor {_path_name(path)} {tuple(array.shape)} "
                                  f"holds {bad:,} NaN or infinite values; the weights are "
                                  "damaged (a diverged run?)")
    return variables


def fits(variables, expected, where):
    """ConversionError unless `variables` have exactly the paths and shapes of `expected` (a
    pytree of arrays or ShapeDtypeStructs, e.g. from `jax.eval_shape(module.init, ...)`)."""
    got = {_path_name(p): tuple(np.shape(v))
           for p, v in jax.tree_util.tree_leaves_with_path(variables)}
    want = {_path_name(p): tuple(v.shape)
            for p, v in jax.tree_util.tree_leaves_with_path(expected)}
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise ConversionError(f"{where} do not fit the module: missing {missing[:3]}"
                              f"{' ...' if len(missing) > 3 else ''}, unexpected {extra[:3]}"
                              f"{' ...' if len(extra) > 3 else ''}")
    for name in sorted(want):
        if got[name] != want[name]:
            raise ConversionError(f"{where}: {name} has shape {got[name]}, the module "
                                  f"expects {want[name]}")
    return variables


# ---------------------------------------------------------------------------------------------
# Converted directories

_BUILD_ERRORS = (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError,
                 ZeroDivisionError)


def load_converted(directory, kind, build, shapes):
    """(module, variables, meta) of a directory a converter of `kind` wrote.

    build(module_kwargs) -> module checks the settings of meta.json as the converter checks a
    file's; shapes(module) -> the pytree of ShapeDtypeStructs its variables must match. Every
    problem is one ConversionError naming the directory and the field or tensor.
    """
    directory = os.fspath(directory)
    variables, meta = variables_io.load_variables(directory)
    where = os.path.join(directory, variables_io.META_FILE)
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        got = meta.get("kind") if isinstance(meta, dict) else None
        raise ConversionError(f"{directory} holds a {short_repr(got)} conversion, not {kind!r}")
    module_kwargs = meta.get("module_kwargs")
    if not isinstance(module_kwargs, dict):
        raise ConversionError(f"{where} has no module_kwargs object (written by a converter of "
                              f"{kind}? convert the original file again)")
    try:
        module = build(module_kwargs)
        expected = shapes(module)
    except ConversionError as e:
        raise ConversionError(f"{where}: {e}") from None
    except _BUILD_ERRORS as e:
        raise ConversionError(f"{where}: module_kwargs do not describe a {kind} network "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    fits(variables, expected, f"{directory} variables")
    finite(variables, f"{directory} variables")
    return module, variables, meta
