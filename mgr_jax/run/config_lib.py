"""Config checks: each bad value is one UserError line saying what is wrong and how to fix it.

`validate(config)` checks every field before anything is written: that it is a known field
(`SCHEMA`, the fields of configs/default.py), its type, its range or choices, the paths it
names, and `generator.kwargs` against the generator kind's loader signature. It needs no
device and no data: the run calls it once, at the door (`train.train_and_evaluate`).
`check_memory(config, devices)` adds what the batch sizes imply for memory, a lower bound
that is known once the devices are.
"""
import difflib
import json
import math
import os
from typing import Callable, NamedTuple, Optional

from mgr_jax import generators, methods, regularisers
from mgr_jax.data import datasets
from mgr_jax.errors import UserError
from mgr_jax.models import resnet
from mgr_jax.run import build, pretrained

METHODS = methods.METHODS  # the paper's; `methods.method_names()` adds registered ones
AUGMENTS = ("none", "randaugment", "trivialaugment", "augmix")
DTYPES = ("float32", "bfloat16")
DEFAULTS = "configs/default.py"


def to_dict(config):
    """The config as plain JSON-able dicts (tuples become lists)."""
    return json.loads(config.to_json())


# ------------------------------------------------------------------------------ the schema


class Field(NamedTuple):
    """One config field: its type ("int", "float", "bool", "str", "ints", "dict") and a check
    `value -> problem or None` (the problem completes "name=value ...")."""
    kind: str
    check: Optional[Callable] = None


def _range(lo=None, hi=None, lo_open=False, hi_open=False):
    """A check that the value is in the interval (None: unbounded on that side)."""
    def check(v):
        low_bad = lo is not None and (v <= lo if lo_open else v < lo)
        high_bad = hi is not None and (v >= hi if hi_open else v > hi)
        if not (low_bad or high_bad):
            return None
        if hi is None:
            return f"must be {'>' if lo_open else '>='} {lo}"
        if lo is None:
            return f"must be {'<' if hi_open else '<='} {hi}"
        return f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    return check


def _one_of(choices):
    return lambda v: None if v in choices else f"is not valid; choose one of {list(choices)}"


def _arch_choice(v):
    return _one_of(sorted(resnet.ARCHS))(v)


def _dataset_choice(v):
    names = ("digits",) + datasets.NAMES
    return None if v in names else f"is not a known dataset; choose one of {list(names)}"


# Sizes bounded so that a typo cannot ask for terabytes (or overflow a step counter) after
# the run has started: the largest epochs and latent size a run may use (the finder's width:
# method_settings.MAX_HIDDEN_DIM).
MAX_EPOCHS = 100_000
MAX_LATENT_DIM = 65_536


def _milestones(v):
    if any(m < 1 for m in v) or list(v) != sorted(set(v)):
        return "must be increasing epochs (>= 1)"
    if any(m > MAX_EPOCHS for m in v):
        return f"must be epochs <= {MAX_EPOCHS:,}"
    return None


POSITIVE_INT = Field("int", _range(1))
NON_NEGATIVE_INT = Field("int", _range(0))
SEED = Field("int", _range(0, 2 ** 32 - 1))
FRACTION_OPEN = Field("float", _range(0, 1, lo_open=True, hi_open=True))
POSITIVE = Field("float", _range(0, lo_open=True))
NON_NEGATIVE = Field("float", _range(0))

SCHEMA = {
    "method": Field("str", lambda v: _one_of(methods.method_names())(v)),
    "seed": SEED,
    "num_epochs": Field("int", _range(1, MAX_EPOCHS)),
    "batch_size": POSITIVE_INT,
    "eval_batch_size": POSITIVE_INT,
    "optimizer": {
        "lr": POSITIVE,
        "momentum": Field("float", _range(0, 1, hi_open=True)),
        "nesterov": Field("bool"),
        "weight_decay": NON_NEGATIVE,
        "lr_milestones": Field("ints", _milestones),
        "lr_decay": POSITIVE,
    },
    "data": {
        "name": Field("str", _dataset_choice),
        "manual_dir": Field("str"),
        "image_size": Field("int", _range(8)),
        "subset_fraction": Field("float", _range(0, 1, lo_open=True)),
        "val_fraction": FRACTION_OPEN,
        "test_fraction": FRACTION_OPEN,
        "split_seed": SEED,
        "classes": Field("ints"),  # checked with data.name: `datasets.check_classes`
        "augment": Field("str", _one_of(AUGMENTS)),
        "prepared_dir": Field("str"),
        "num_workers": NON_NEGATIVE_INT,
        "num_threads": NON_NEGATIVE_INT,
        "prefetch_batches": POSITIVE_INT,
        "eval_crop_fraction": Field("float", _range(0, 1, lo_open=True)),
    },
    "model": {
        "arch": Field("str", _arch_choice),
        "width": Field("float", _range(0, 16, lo_open=True)),
        "cifar_stem": Field("bool"),
        "init_checkpoint": Field("str"),
        "dtype": Field("str", _one_of(DTYPES)),
        "remat": Field("bool"),
        "fresh_head": Field("bool"),
    },
    "generator": {
        "kind": Field("str"),
        "checkpoint": Field("str"),
        "seed": SEED,
        "latent_dim": Field("int", _range(1, MAX_LATENT_DIM)),
        "resolution": Field("int", _range(1, 4096)),
        "kwargs": Field("dict"),
    },
    "distributed": {
        "enabled": Field("bool"),
        "coordinator_address": Field("str"),
        "num_processes": POSITIVE_INT,
        "process_id": NON_NEGATIVE_INT,
        "timeout_s": POSITIVE_INT,
    },
    "log_every_steps": POSITIVE_INT,
    "keep_best_checkpoint": Field("bool"),
}


def _settings_fields():
    """The schema of the method's settings, derived from the settings dataclasses: each
    field at its config path (`build.CONFIG_PATHS`), of its default's type; their values are
    checked by making the settings (`build.settings_from_config`)."""
    kinds = {bool: "bool", int: "int", float: "float", str: "str"}
    for settings_type, paths in build.CONFIG_PATHS.items():
        defaults = settings_type()
        for name, path in paths.items():
            section, _, key = path.rpartition(".")
            node = SCHEMA.setdefault(section, {}) if section else SCHEMA
            node[key] = Field(kinds[type(getattr(defaults, name))])


_settings_fields()


def is_mps(method):
    """Whether a method samples its latents with MPS (Algorithm 1)."""
    entry = regularisers.method_table().get(method)
    return entry is not None and entry[1] == "mps"


def _sections_needed(method):
    """The sections a method reads: the others may be absent from a library user's config."""
    needed = {"optimizer", "data", "model"}
    if method != "base":
        needed |= {"generator", "augment", "uda"}
    if is_mps(method):
        needed |= {"finder", "mps"}
    return needed


# ------------------------------------------------------------------------------- checking


def _require(ok, message):
    if not ok:
        raise UserError(message)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _type_problem(kind, v):
    """Why `v` is not of the field's kind, or None."""
    if kind == "int":
        ok, want = _is_int(v), "an integer"
    elif kind == "float":
        ok, want = (_is_int(v) or isinstance(v, float)) and math.isfinite(v), "a finite number"
    elif kind == "bool":
        ok, want = isinstance(v, bool), "True or False"
    elif kind == "str":
        ok, want = isinstance(v, str), "a string"
    elif kind == "ints":
        ok, want = isinstance(v, (list, tuple)) and all(map(_is_int, v)), "a tuple of integers"
    else:
        ok, want = isinstance(v, dict), "a dict (JSON object)"
    return None if ok else f"must be {want}"


def _show(name, value):
    return f"{name}={tuple(value) if isinstance(value, list) else value!r}"


def _check_field(name, field, value):
    problem = _type_problem(field.kind, value)
    if problem is None and field.check is not None:
        problem = field.check(value)
    _require(problem is None, f"{_show(name, value)} {problem}")


def _unknown_field(name, known):
    close = difflib.get_close_matches(name.rpartition(".")[2], known, n=1)
    hint = f"did you mean {name.rpartition('.')[0] + '.' if '.' in name else ''}{close[0]}? " \
        if close else ""
    return UserError(f"config field {name} is not known ({hint}the fields are those of "
                     f"{DEFAULTS})")


def _check_section(values, schema, prefix, required):
    """Walk one level: unknown keys, missing keys (those in `required`), each value."""
    unknown = sorted(set(values) - set(schema))
    if unknown:
        raise _unknown_field(f"{prefix}{unknown[0]}", sorted(schema))
    for key, spec in schema.items():
        name = f"{prefix}{key}"
        if key not in values:
            _require(key not in required, f"config has no field {name}; add it as in {DEFAULTS}")
            continue
        if isinstance(spec, dict):
            _require(isinstance(values[key], dict),
                     f"config field {name} must be a section (a ConfigDict) as in {DEFAULTS}")
            _check_section(values[key], spec, f"{name}.", set(spec))
        else:
            _check_field(name, spec, values[key])


def _required_top_level(method):
    optional = {"generator", "augment", "uda", "finder", "mps", "distributed"}
    sections = _sections_needed(method)
    return {k for k in SCHEMA if k not in optional or k in sections}


def _check_paths(config):
    """Paths named by the config that must exist (data paths are the dataset loaders')."""
    path = config.model.init_checkpoint
    if path:
        pretrained.check_init_checkpoint_path(path)


def _check_generator(config, paths=True):
    if config.method == "base" or "generator" not in config:
        return
    gen = config.generator
    _require(bool(gen.kind),
             f"method={config.method} needs a generator: set generator.kind and "
             "generator.checkpoint (see README, 'Generators')")
    kwargs = gen.get("kwargs") or {}
    _require(not kwargs or gen.kind != "random",
             f"generator.kwargs={dict(kwargs)!r} is for loading a checkpoint; the random "
             "kind takes generator.seed / latent_dim / resolution instead")
    if gen.kind == "random":
        return
    _require(gen.kind in generators.KINDS,
             f"generator.kind={gen.kind!r} is not known; choose one of "
             f"{['random'] + sorted(generators.KINDS)}")
    _require(not paths or bool(gen.checkpoint) and os.path.exists(gen.checkpoint),
             f"generator.checkpoint={gen.checkpoint!r} does not exist; point it at a converted "
             f"directory (python -m converters.{gen.kind} IN OUT) or the original file")
    generators.check_kwargs(gen)


def validate(config, paths=True):
    """Raise UserError for the first bad field of `config` (see the module docstring).

    `paths=False` skips the checks that the files a config names exist (model.init_checkpoint,
    generator.checkpoint): for library users who pass the weights or the generator in
    themselves, as `run.build.build(..., generator=G)` allows.
    """
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    method = values.get("method")
    _check_field("method", SCHEMA["method"], method)
    # a registered regulariser's own section: checked by making its settings (below)
    own = {r.section for r in regularisers.registered().values()} - set(SCHEMA)
    _check_section({k: v for k, v in values.items() if k not in own}, SCHEMA, "",
                   _required_top_level(method))
    dist = values.get("distributed")
    if dist:
        _require(dist["process_id"] < dist["num_processes"],
                 f"distributed.process_id={dist['process_id']} must be below "
                 f"distributed.num_processes={dist['num_processes']}")
    build.settings_from_config(config)  # the settings' own checks (SettingError)
    build.regulariser_settings(config)
    data = values.get("data")
    if data:
        datasets.check_classes(data["name"], data["classes"])
    if paths:
        _check_paths(config)
    _check_generator(config, paths)


# ------------------------------------------------------------------------------- memory


def _conv_out(size, kernel, stride, pad):
    return (size + 2 * pad - kernel) // stride + 1


def activation_elements(arch, width, cifar_stem, size):
    """Elements per image of the convolution outputs that a training step keeps for its
    backward pass (BatchNorm and ReLU outputs, workspace and parameters not counted: a lower
    bound of what one image costs)."""
    block, stages = resnet.ARCHS[arch].keywords["block"], resnet.ARCHS[arch].keywords[
        "stage_sizes"]
    base = max(1, int(round(64 * width)))
    s = size if cifar_stem else _conv_out(size, 7, 2, 3)
    total = base * s * s
    if not cifar_stem:
        s = _conv_out(s, 3, 2, 1)
    for i, blocks in enumerate(stages):
        c = base * 2 ** i
        for j in range(blocks):
            s = _conv_out(s, 3, 2 if i > 0 and j == 0 else 1, 1)
            per_block = 2 * c if block.expansion == 1 else 6 * c
            total += per_block * s * s
    return total


def step_memory_bytes(config):
    """A lower bound of the bytes one training step holds (see `activation_elements`)."""
    size = config.data.image_size
    per_image = activation_elements(config.model.arch, config.model.width,
                                    config.model.cifar_stem, size)
    per_image *= 2 if config.model.dtype == "bfloat16" else 4
    per_image += size * size * 3 * 4  # the normalised input itself
    images = config.batch_size
    if config.method != "base":
        images += config.synthetic_batch_size
    if is_mps(config.method):
        images += config.batch_size  # the D_val batch of the meta step
    total = images * per_image
    gen = config.get("generator")
    if config.method != "base" and gen is not None and gen.kind == "random":
        # the random generator's images at its own resolution, before the resize
        total += config.synthetic_batch_size * gen.resolution ** 2 * 3 * 4
    return total


def host_memory_bytes():
    """Physical memory, or the cgroup's limit when lower; None when unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                limit = int(f.read().strip())
        except (OSError, ValueError):
            continue
        total = limit if total is None else min(total, limit)
    return total


def _device_memory(device):
    """(bytes one device can hold, what that is) or (None, "")."""
    if device.platform == "cpu":
        return host_memory_bytes(), "memory of this machine"
    try:
        limit = (device.memory_stats() or {}).get("bytes_limit")
    except Exception:  # noqa: BLE001 (backends without memory statistics)
        limit = None
    return limit, f"memory of one {device.platform.upper()} ({device.device_kind})"


def _gb(n):
    return f"{n / 2 ** 30:.1f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"


def check_memory(config, devices):
    """UserError when the batch sizes certainly exceed the devices' memory.

    The bound is a lower one (`step_memory_bytes`), split evenly over the devices (data
    parallelism), so only batch sizes that cannot fit are refused.
    """
    if not devices:
        return
    available, what = _device_memory(devices[0])
    if not available:
        return
    if devices[0].platform == "cpu":
        share = sum(d.process_index == devices[0].process_index for d in devices) / len(devices)
    else:
        share = 1.0 / len(devices)
    need = step_memory_bytes(config) * share
    _require(need <= available,
             f"batch_size={config.batch_size} (synthetic_batch_size="
             f"{config.synthetic_batch_size}) needs at least {_gb(need)} for one training step "
             f"of {config.model.arch} at {config.data.image_size}x{config.data.image_size} "
             f"(activations kept for the backward pass), more than the {_gb(available)} "
             f"{what}; lower batch_size (or data.image_size, model.width)")
    size = config.data.image_size
    eval_need = config.eval_batch_size * size * size * 3 * (4 + 4) * share
    _require(eval_need <= available,
             f"eval_batch_size={config.eval_batch_size} needs at least {_gb(eval_need)} for one "
             f"evaluation batch, more than the {_gb(available)} {what}; lower eval_batch_size")


def peak_bytes(arguments, outputs, aliased, temporaries):
    """Bytes one device holds while a compiled step runs: its arguments, the outputs not
    written over donated arguments (`aliased`), and its temporaries."""
    return arguments + outputs - aliased + temporaries


def compiled_peak_bytes(memory):
    """`peak_bytes` of a compiled step's `memory_analysis()`."""
    return peak_bytes(memory.argument_size_in_bytes, memory.output_size_in_bytes,
                      memory.alias_size_in_bytes, memory.temp_size_in_bytes)


def check_compiled_memory(config, memory, device):
    """UserError when the compiler's memory analysis of the training step (`memory`, from
    `compiled.memory_analysis()`) exceeds what `device` holds: the exact figure on backends
    that report their memory (GPU, TPU), where `check_memory` has only a lower bound."""
    available, what = _device_memory(device)
    if not available or memory is None or device.platform == "cpu":
        return
    need = compiled_peak_bytes(memory)
    _require(need <= available,
             f"batch_size={config.batch_size} (synthetic_batch_size="
             f"{config.synthetic_batch_size}) needs {_gb(need)} per device for one {config.method} "
             f"training step (the compiler's memory analysis), more than the {_gb(available)} "
             f"{what}; lower batch_size (or data.image_size, model.width), use model.dtype="
             "bfloat16, or add devices")

