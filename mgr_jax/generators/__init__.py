"""Generators behind one interface (see base.Generator), chosen by `config.generator.kind`."""
import importlib
import inspect
import math
import os

from converters import torch_pickle
from mgr_jax.errors import UserError
from mgr_jax.generators import tiny
from mgr_jax.generators.base import Generator

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
    "num_steps": (lambda v: v >= 2, "must be at least 2 (EDM's Heun schedule)"),
    "noise_mode": (lambda v: v in ("const", "none"),
                   "must be 'const' or 'none' for training ('random' needs a noise key per "
                   "call, which the train step does not pass)"),
    "sigma_min": (lambda v: v > 0, "must be positive"),
    "sigma_max": (lambda v: v > 0, "must be positive"),
    "rho": (lambda v: v > 0, "must be positive"),
    "noise_seed": (lambda v: v >= 0, "must be >= 0"),
}


def _loader_path(kind):
    return KINDS[kind].replace(".", "/") + ".py"


def _parameters(fn, skip):
    """({name: default} of fn's keyword parameters after the first `skip`, takes **kwargs)."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    named = {p.name: p.default for p in params
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind == p.VAR_KEYWORD for p in params)


def _type_problem(value, default):
    """Why `value` cannot stand where `default` is the loader's default, or None."""
    if default is None or default is inspect.Parameter.empty:
        return None  # nothing to compare with; the loader checks it.
    if isinstance(default, bool):
        ok, want = isinstance(value, (bool, int)), "a boolean"
    elif isinstance(default, int):
        ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
            math.isfinite(value)
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
    head = f"generator.kwargs={kwargs!r} does not fit generator.kind={kind}"
    if not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
        raise UserError(f"{head}: its keys must be keyword names")
    is_directory = os.path.isdir(gen_config.checkpoint or "")
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
        problem = _type_problem(value, accepted.get(key))
        if problem is None and key in _VALUE_CHECKS and not isinstance(value, bool):
            ok, why = _VALUE_CHECKS[key]
            try:
                problem = None if ok(value) else why
            except TypeError:
                problem = why
        if problem:
            raise UserError(f"{head}: {key}={value!r} {problem}")


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
    if not path or not os.path.exists(path):
        raise UserError(f"generator.checkpoint={path!r} does not exist; point it at a converted "
                        f"directory (python -m converters.{kind} IN OUT) or the original file")
    check_kwargs(gen_config)
    module = importlib.import_module(KINDS[kind])
    kwargs = _plain(gen_config.get("kwargs"))
    try:
        gen = module.load(path, **kwargs)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise UserError(f"generator.kwargs={kwargs!r} does not fit generator.kind={kind}: "
                        f"{e} (see `load` in {_loader_path(kind)})") from e
    except (OSError, ValueError, NotImplementedError, torch_pickle.UnsafePickleError,
            torch_pickle.CheckpointFormatError) as e:
        # A checkpoint of another kind, a damaged file or settings that contradict it.
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"generator.checkpoint={path!r} could not be loaded as "
                        f"generator.kind={kind}: {first_line}") from e
    if gen.conditional and gen.num_classes != num_classes:
        raise UserError(f"generator {path} has {gen.num_classes} classes but the dataset has "
                        f"{num_classes}; use a generator trained on this dataset")
    return gen
