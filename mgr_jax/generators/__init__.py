"""Generators behind one interface (see base.Generator), chosen by `config.generator.kind`."""
import importlib
import inspect
import math
import os
import stat

from converters import input_files, torch_pickle
from converters.torch_tensors import short_repr
from mgr_jax.errors import UserError
from mgr_jax.generators import tiny
from mgr_jax.generators.base import MAX_STEPS, MAX_TRUNCATION_PSI, Generator

# kind -> module with `load(checkpoint, **kwargs) -> Generator`.
KINDS = {"stylegan2_ada": "mgr_jax.generators.stylegan2_ada",
         "biggan": "mgr_jax.generators.biggan",
         "fastgan": "mgr_jax.generators.fastgan",
         "edm": "mgr_jax.generators.edm",
         "stylegan_xl": "mgr_jax.generators.stylegan_xl"}
# Where a loader's own **kwargs go: (module, function, its leading positional parameters that
# the loader fills, whether they apply to a converted directory too). Converters' keywords
# only matter when an original file is converted; a converted directory has them fixed.
FORWARDED = {"stylegan2_ada": ("converters.stylegan2_ada", "convert", 1, False),
             "stylegan_xl": ("converters.stylegan_xl", "convert", 1, False),
             "biggan": ("converters.biggan", "convert", 1, False),
             "edm": ("mgr_jax.generators.edm", "make_generator", 2, True)}
# Values the training step can use, by keyword (types come from the defaults).
_VALUE_CHECKS = {
    "num_steps": (lambda v: 2 <= v <= MAX_STEPS,
                  f"must be at least 2 and at most {MAX_STEPS} (EDM's Heun schedule; the "
                  "official samplers use 18 to 256 steps)"),
    "noise_mode": (lambda v: v in ("const", "none"),
                   "must be 'const' or 'none' for training ('random' needs a noise key per "
                   "call, which the train step does not pass)"),
    "sigma_min": (lambda v: 0 < v <= 1e4, "must be in (0, 1e4]"),
    "sigma_max": (lambda v: 0 < v <= 1e4, "must be in (0, 1e4]"),
    "rho": (lambda v: 0 < v <= 100, "must be in (0, 100]"),
    "noise_seed": (lambda v: 0 <= v < 2 ** 32, "must be in 0..2**32-1"),
    "truncation_psi": (lambda v: abs(v) <= MAX_TRUNCATION_PSI,
                       f"must be in [-{MAX_TRUNCATION_PSI:g}, {MAX_TRUNCATION_PSI:g}] (1 = no "
                       "truncation; past that, w leaves the range the generator was trained "
                       "on and float32 overflows)"),
    "truncation_cutoff": (lambda v: v is None or 0 <= v <= 1024,
                          "must be None or a number of ws in 0..1024"),
    "unroll": (lambda v: isinstance(v, bool) or 1 <= v <= MAX_STEPS,
               f"must be true, false or a step count in 1..{MAX_STEPS}"),
}
# Keywords whose default is None, so the default tells no type: (accepted types, description).
_OPTIONAL_TYPES = {"truncation_cutoff": ((int,), "None or an integer"),
                   "kwargs_json": ((str,), "None or a file path (a string)")}
_LOAD_ERROR_LIMIT = 300  # characters of a loader's message kept in the one line


# Errors whose message says it all; any other is reported with its type's name.
_EXPECTED = (OSError, ValueError, NotImplementedError, torch_pickle.UnsafePickleError,
             torch_pickle.CheckpointFormatError)


def _loader_path(kind):
    return KINDS[kind].replace(".", "/") + ".py"


def _parameters(fn, skip):
    """({name: default} of fn's keyword parameters after the first `skip`, takes **kwargs)."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    named = {p.name: p.default for p in params
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind == p.VAR_KEYWORD for p in params)


def _finite(value):
    """Whether number `value` is finite as a float (an int past float range is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _type_problem(key, value, default):
    """Why `value` cannot stand for keyword `key` whose loader default is `default`, or None."""
    if default is None and key in _OPTIONAL_TYPES:
        types, want = _OPTIONAL_TYPES[key]
        ok = value is None or (isinstance(value, types) and not isinstance(value, bool))
        return None if ok else f"must be {want}"
    if default is None or default is inspect.Parameter.empty:
        return None  # nothing to compare with; the loader checks it.
    if isinstance(default, bool):
        ok, want = isinstance(value, (bool, int)), "a boolean"
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2 ** 63
        want = "an integer (of at most 63 bits)"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
        want = "a finite number"
    elif isinstance(default, str):
        ok, want = isinstance(value, str), "a string"
    else:
        return None
    return None if ok else f"must be {want} (the loader's default is {default!r})"


def _plain(kwargs):
    kwargs = kwargs or {}
    return kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs)


def _accepted(kind, is_directory):
    """({keyword: default} the kind's loading accepts, whether any other keyword is too)."""
    loader = importlib.import_module(KINDS[kind]).load
    named, var = _parameters(loader, 1)
    if not var or kind not in FORWARDED:
        return named, var
    module, function, skip, for_directories = FORWARDED[kind]
    if is_directory and not for_directories:
        return named, False
    extra, extra_var = _parameters(getattr(importlib.import_module(module), function), skip)
    return {**extra, **named}, extra_var


def check_kwargs(gen_config):
    """UserError (one line) unless `generator.kwargs` fit the kind's `load` signature.

    Every keyword must be one `load` in mgr_jax/generators/<kind>.py takes (or one it passes
    on: a converter's, only when the checkpoint is an original file, not a converted
    directory), of the type of its default, with a value the training step can use.
    """
    kind, kwargs = gen_config.kind, _plain(gen_config.get("kwargs"))
    if not kwargs or kind not in KINDS:
        return
    head = f"generator.kwargs={_shown(kwargs)} does not fit generator.kind={kind}"
    if not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
        raise UserError(f"{head}: its keys must be keyword names")
    checkpoint = gen_config.checkpoint
    is_directory = isinstance(checkpoint, str) and os.path.isdir(checkpoint)
    accepted, any_other = _accepted(kind, is_directory)
    unknown = [] if any_other else sorted(k for k in kwargs if k not in accepted)
    if unknown and is_directory:
        for_files, files_take_any = _accepted(kind, False)
        if files_take_any or set(unknown) <= set(for_files):
            raise UserError(f"{head}: {unknown} only apply when an original file is converted, "
                            f"and generator.checkpoint={gen_config.checkpoint!r} is a converted "
                            "directory (its settings were fixed at conversion); remove them")
    if unknown:
        takes = ", ".join(sorted(accepted)) or "no keywords"
        raise UserError(f"{head}: `load` in {_loader_path(kind)} takes no {unknown} (it takes "
                        f"{takes})")
    for key, value in sorted(kwargs.items()):
        problem = _type_problem(key, value, accepted.get(key))
        if problem is None and key in _VALUE_CHECKS and not isinstance(value, bool):
            ok, why = _VALUE_CHECKS[key]
            try:
                problem = None if ok(value) else why
            except (TypeError, ValueError, OverflowError):
                problem = why
        if problem:
            raise UserError(f"{head}: {key}={_shown(value)} {problem}")


def _checkpoint_problem(path):
    """Why `path` cannot be a generator checkpoint (a file or a converted directory), or None."""
    if not isinstance(path, str) or not path:
        return "is not a path"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except (OSError, ValueError) as e:
        return f"cannot be read ({type(e).__name__}: {e})"
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return f"is {input_files.file_kind(mode)}, not a file or a converted directory"
    return None


def _shown(value, limit=200):
    """repr(value) for a message, at most `limit` characters (and never failing: the repr of
    a 5000-digit int raises)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a message must not fail
        text = short_repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _one_line(e):
    """`e` as one line for a UserError: its message (type named if unusual), shortened."""
    text = " ".join(str(e).split())
    if isinstance(e, MemoryError):
        text = "out of memory (MemoryError)"
    elif not isinstance(e, _EXPECTED) or not text:
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= _LOAD_ERROR_LIMIT else text[:_LOAD_ERROR_LIMIT - 3] + "..."


def load_generator(gen_config, num_classes) -> Generator:
    """Build the generator `gen_config` names.

    `gen_config.kwargs` (a dict, may be empty) goes to the kind's `load` as keyword arguments,
    e.g. {"num_steps": 2} for edm, {"kwargs_json": "G.json"} for biggan / stylegan2_ada.
    UserError (one line) for unknown kinds, missing files, a checkpoint that is not of `kind`
    or kwargs the loader does not take (`check_kwargs`).
    """
    kind = gen_config.kind
    if kind == "random":
        return tiny.load(seed=gen_config.seed, num_classes=num_classes,
                         latent_dim=gen_config.latent_dim, resolution=gen_config.resolution)
    if kind not in KINDS:
        raise UserError(f"generator.kind={kind!r} is not known; choose one of "
                        f"{['random'] + sorted(KINDS)}")
    path = gen_config.checkpoint
    problem = _checkpoint_problem(path)
    if problem:
        raise UserError(f"generator.checkpoint={_shown(path)} {problem}; point it at a "
                        f"converted directory (python -m converters.{kind} IN OUT) or the "
                        "original file")
    check_kwargs(gen_config)
    module = importlib.import_module(KINDS[kind])
    kwargs = _plain(gen_config.get("kwargs"))
    try:
        gen = module.load(path, **kwargs)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise UserError(f"generator.checkpoint={path!r} could not be loaded as "
                            f"generator.kind={kind} with generator.kwargs="
                            f"{_shown(kwargs)}: {_one_line(e)}") from e
        raise UserError(f"generator.kwargs={_shown(kwargs)} does not fit "
                        f"generator.kind={kind}: {_one_line(e)} (see `load` in "
                        f"{_loader_path(kind)})") from e
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a damaged or hostile checkpoint causes
        # A checkpoint of another kind, a damaged file, settings that contradict it or that
        # the converter refuses (each message names the field or tensor).
        raise UserError(f"generator.checkpoint={path!r} could not be loaded as "
                        f"generator.kind={kind}: {_one_line(e)}") from e
    if gen.conditional and gen.num_classes != num_classes:
        raise UserError(f"generator {path} has {gen.num_classes} classes but the dataset has "
                        f"{num_classes}; use a generator trained on this dataset")
    return gen
