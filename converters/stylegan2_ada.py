"""Convert official StyleGAN2-ADA (PyTorch) generators to Flax, without torch and without code.

Inputs:
  - a `network-snapshot-*.pkl` as the official training loop writes it: a pickle of persistent
    objects (`torch_utils.persistence`). The `G_ema` tree is walked for its parameters and
    buffers; its own init kwargs give the hyper-parameters. The source text every snapshot
    carries is dropped unread, and the pickle is read by `converters.torch_pickle` with an
    allow-list of globals, so nothing in the file runs.
  - a `G_ema.state_dict()` file (`torch.save`, `.pt`/`.pth`), with the hyper-parameters as
    keyword arguments or a JSON file, both in the official init-kwargs layout
    (`{"z_dim": .., "mapping_kwargs": {..}, "synthesis_kwargs": {..}}`, or a JSON holding that
    under "G_kwargs") or as `mgr_jax.models.stylegan2.Generator` field names.

CLI:  python -m converters.stylegan2_ada in.pkl OUT_DIR [--kwargs_json J.json] [--seed S]
[--overwrite] writes `mgr_jax.variables_io` variables with meta {"kind": "stylegan2_ada",
"module_kwargs", "source"} and OUT_DIR/samples.png (one row per class for a conditional G).
OUT_DIR must be new, or an earlier conversion with --overwrite; errors are one line, status 2.
"""
import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from converters import checks, cli, input_files, torch_pickle
from converters.errors import ConversionError
from converters.torch_tensors import short_repr
from mgr_jax import files, variables_io
from mgr_jax.models import stylegan2

KIND = "stylegan2_ada"
_FIELDS = {f.name for f in dataclasses.fields(stylegan2.Generator)} - {"parent", "name"}
# Official kwargs that change nothing in float32 inference (mixed precision, memory layout,
# training-time EMA); accepted and dropped.
_IGNORED = {"num_fp16_res", "fp16_channels_last", "channels_last", "w_avg_beta",
            "fused_modconv_default", "class_name"}
_MAPPING_NAMES = {"num_layers": "mapping_layers", "embed_features": "embed_features",
                  "layer_features": "layer_features", "activation": "mapping_activation",
                  "lr_multiplier": "mapping_lr_multiplier"}
_SYNTHESIS_NAMES = {"channel_base": "channel_base", "channel_max": "channel_max",
                    "architecture": "architecture", "conv_clamp": "conv_clamp",
                    "resample_filter": "resample_filter", "use_noise": "use_noise"}


class _PersistentObject:
    """What a `persistence._reconstruct_persistent_obj(meta)` call becomes: name and state only."""

    def __init__(self, meta):
        # References, never copies: a memoized dict handed to many calls is not multiplied.
        state = meta.get("state") if isinstance(meta, dict) else None
        if not isinstance(meta, dict) or not isinstance(state, (dict, type(None))):
            raise ConversionError("a persistent object whose meta is not a dict with a dict "
                                  "'state'")
        self.class_name = meta.get("class_name")
        self.state = state or {}
        # meta["module_src"] (the pickled source text) is deliberately not kept.


class _EasyDict(dict):
    """Stand-in for `dnnlib.util.EasyDict`: a dict whose keys also read as attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _extra_globals():
    """The snapshot-specific globals the reader may resolve, each to a harmless stand-in."""
    return {"torch_utils.persistence._reconstruct_persistent_obj": _PersistentObject,
            "dnnlib.util.EasyDict": _EasyDict}


def _plain(value):
    """Numpy scalars (pickles may hold them) -> Python numbers, recursively, for JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def module_kwargs_from_G_kwargs(G_kwargs):
    """Official Generator init kwargs (or our field names) -> `stylegan2.Generator` fields."""
    G_kwargs = _plain(dict(G_kwargs))
    if "G_kwargs" in G_kwargs:  # a sidecar JSON like the fixtures' (init kwargs under a key)
        G_kwargs = dict(G_kwargs["G_kwargs"])
    out = {}
    for section, names in (("mapping_kwargs", _MAPPING_NAMES),
                           ("synthesis_kwargs", _SYNTHESIS_NAMES)):
        for key, value in dict(G_kwargs.pop(section, None) or {}).items():
            if key in names:
                out[names[key]] = value
            elif key not in _IGNORED:
                raise ValueError(f"unsupported StyleGAN2-ADA {section} entry {key!r}={value!r}")
    class_name = G_kwargs.get("class_name", "training.networks.Generator")
    if not isinstance(class_name, str) or not class_name.endswith(
            ("training.networks.Generator", "networks_stylegan2.Generator")):
        raise ValueError(f"class_name {class_name!r} is not the StyleGAN2(-ADA) Generator")
    for key, value in G_kwargs.items():
        if key in _FIELDS:
            out[key] = value
        elif key not in _IGNORED:
            raise ValueError(f"unsupported StyleGAN2-ADA generator kwarg {key!r}={value!r}")
    for key in ("z_dim", "c_dim", "w_dim", "img_resolution"):
        if key not in out:
            raise ValueError(f"generator kwargs lack {key!r} (have {sorted(out)})")
    return check_fields(out)


def _optional(value, check, *args):
    return None if value is None else check(value, *args)


def _filter_taps(value):
    """resample_filter: 1..MAX_FILTER_TAPS finite numbers that do not sum to 0."""
    if isinstance(value, np.ndarray):
        value = value.ravel().tolist()
    if not isinstance(value, (list, tuple)) or not 0 < len(value) <= checks.MAX_FILTER_TAPS:
        raise ConversionError(f"resample_filter={short_repr(value)} is not a list of 1.."
                              f"{checks.MAX_FILTER_TAPS} numbers")
    taps = tuple(checks.number(t, f"resample_filter[{i}]", -1e6, 1e6)
                 for i, t in enumerate(value))
    if not sum(taps):
        raise ConversionError(f"resample_filter={list(taps)} sums to 0")
    return tuple(int(t) if t.is_integer() else t for t in taps)


def check_fields(module_kwargs):
    """`stylegan2.Generator` fields with every value checked (kind and range; sizes within
    `converters.checks` limits); ConversionError naming the first bad one."""
    if not isinstance(module_kwargs, dict):
        raise ConversionError("the generator settings are not a dict")
    unknown = sorted(str(k) for k in module_kwargs if k not in _FIELDS)
    missing = [k for k in ("z_dim", "c_dim", "w_dim", "img_resolution") if k not in module_kwargs]
    if unknown or missing:
        raise ConversionError(f"generator settings: unknown {unknown[:5]}, missing {missing}")
    kw, out = module_kwargs, {}
    integer, number = checks.integer, checks.number
    out["z_dim"] = integer(kw["z_dim"], "z_dim", 0, checks.MAX_CHANNELS)
    out["c_dim"] = integer(kw["c_dim"], "c_dim", 0, checks.MAX_CLASSES)
    out["w_dim"] = integer(kw["w_dim"], "w_dim", 1, checks.MAX_CHANNELS)
    res = out["img_resolution"] = integer(kw["img_resolution"], "img_resolution", 4,
                                          checks.MAX_RESOLUTION)
    if res & (res - 1):
        raise ConversionError(f"img_resolution={res} is not a power of two")
    fields = {
        "img_channels": lambda v: integer(v, "img_channels", 1, checks.MAX_IMAGE_CHANNELS),
        "mapping_layers": lambda v: integer(v, "mapping_layers", 0, checks.MAX_LAYERS),
        "embed_features": lambda v: _optional(v, integer, "embed_features", 1,
                                              checks.MAX_CHANNELS),
        "layer_features": lambda v: _optional(v, integer, "layer_features", 1,
                                              checks.MAX_CHANNELS),
        "mapping_activation": lambda v: checks.choice(v, "mapping_activation",
                                                      ("linear", "relu", "lrelu")),
        "mapping_lr_multiplier": lambda v: number(v, "mapping_lr_multiplier", 0.0, 1e3,
                                                  positive=True),
        "channel_base": lambda v: integer(v, "channel_base", res, 1 << 20),
        "channel_max": lambda v: integer(v, "channel_max", 1, checks.MAX_CHANNELS),
        "architecture": lambda v: checks.choice(v, "architecture", ("orig", "skip", "resnet")),
        "conv_clamp": lambda v: _optional(v, number, "conv_clamp", 0.0, 1e6, True),
        "resample_filter": _filter_taps,
        "use_noise": lambda v: checks.boolean(v, "use_noise"),
        "dtype": lambda v: checks.choice(v, "dtype", ("float32", "bfloat16", "float16")),
        "upsample_impl": lambda v: checks.choice(v, "upsample_impl",
                                                 ("transposed", "fir_first")),
    }
    for key, check in fields.items():
        if key in kw:
            out[key] = check(kw[key])
    return out


def build_module(module_kwargs):
    """`stylegan2.Generator` from JSON-like kwargs (lists become the tuples Flax can hash),
    every field checked (`check_fields`)."""
    return stylegan2.Generator(**check_fields(module_kwargs))


def module_kwargs_of(module):
    """All fields of a `stylegan2.Generator`, JSON-serialisable, to rebuild it exactly."""
    kwargs = {name: getattr(module, name) for name in sorted(_FIELDS)}
    kwargs["resample_filter"] = list(kwargs["resample_filter"])
    kwargs["dtype"] = jnp.dtype(kwargs["dtype"]).name
    return kwargs


def _torch_to_flax(key, array):
    """One layout rule per layer type: dense (out,in)->(in,out), conv OIHW->HWIO, const CHW->HWC."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "weight" and array.ndim == 2:
        return array.T
    if leaf == "weight" and array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if leaf == "const" and array.ndim == 3:
        return array.transpose(1, 2, 0)
    return array


def variables_from_state_dict(state_dict, module):
    """Map a torch G state_dict (name -> numpy array) onto `module`'s variables; strict."""
    # Shapes only: eval_shape never draws from this key.
    if any(k.startswith("synthesis.input.") for k in state_dict):
        raise ValueError("this is a StyleGAN3 generator (synthesis.input.*), which this "
                         "StyleGAN2-ADA converter does not handle")
    want = _variable_shapes(module)
    flat = {}
    used = set()
    for path, spec in jax.tree_util.tree_flatten_with_path(want)[0]:
        names = [p.key for p in path]
        key = ".".join(names[1:])
        if key not in state_dict:
            if key == "mapping.w_avg":  # trained with w_avg_beta=None: no truncation centre
                flat[tuple(names)] = np.zeros(spec.shape, np.float32)
                continue
            raise ValueError(f"checkpoint lacks {key!r}: it does not match the generator "
                             f"hyper-parameters {module_kwargs_of(module)}")
        value = _torch_to_flax(key, np.asarray(state_dict[key], np.float32))
        if value.shape != spec.shape:
            raise ValueError(f"{key}: checkpoint shape {value.shape} (after the layout change) "
                             f"!= model shape {spec.shape}; check the hyper-parameters")
        flat[tuple(names)] = value
        used.add(key)
    expected_filter = stylegan2.setup_filter(module.resample_filter)
    for key in sorted(set(state_dict) - used):
        if key.endswith("resample_filter"):  # a constant in our model: only check it agrees
            got = np.asarray(state_dict[key], np.float32)
            if got.shape != expected_filter.shape or not np.allclose(got, expected_filter):
                raise ValueError(f"{key} differs from resample_filter {module.resample_filter}")
            continue
        raise ValueError(f"checkpoint entry {key!r} has no place in the generator built from "
                         f"{module_kwargs_of(module)}")
    variables = {}
    for names, value in flat.items():
        node = variables
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node[names[-1]] = value
    checks.finite(variables, "G")
    return jax.tree.map(jnp.asarray, variables)


def _entries(state, key, where):
    entries = state.get(key) or {}
    if not isinstance(entries, dict):
        raise ConversionError(f"{where or 'G'}: {key} is not a dict")
    return entries


def _state_dict_of(root):
    """Flatten a persistent module tree into torch `state_dict` keys -> numpy arrays.

    Iterative, each module once: a module reached twice (shared, or a cycle) is refused, as
    walking every path of such a tree takes exponential time; the official G shares none.
    """
    out, seen, todo = {}, set(), [("", root)]
    while todo:
        prefix, obj = todo.pop()
        if id(obj) in seen:
            raise ConversionError(f"module {prefix[:-1]} appears twice in the network")
        seen.add(id(obj))
        state = obj.state
        if not isinstance(state, dict):
            raise ConversionError(f"the state of {prefix[:-1] or 'G'} is not a dict")
        skip = state.get("_non_persistent_buffers_set") or ()
        skip = set(skip) if isinstance(skip, (set, frozenset, list, tuple)) else set()
        for key in ("_parameters", "_buffers"):
            for name, value in _entries(state, key, prefix[:-1]).items():
                if value is not None and not (key == "_buffers" and name in skip):
                    out[prefix + str(name)] = np.asarray(value)
        for name, child in reversed(list(_entries(state, "_modules", prefix[:-1]).items())):
            if child is None:
                continue
            if not isinstance(child, _PersistentObject):
                raise ValueError(f"{prefix}{name} is a {type(child).__name__}, not a module of "
                                 "the official StyleGAN2-ADA code")
            todo.append((f"{prefix}{name}.", child))
    return out


def read_checkpoint(path, key="G_ema"):
    """(state_dict, init_kwargs, num_ws) from a snapshot .pkl; (state_dict, None, None) else."""

    obj = torch_pickle.load(path, extra_globals=_extra_globals())
    if isinstance(obj, dict) and key in obj:
        obj = obj[key]
    if isinstance(obj, _PersistentObject):
        if obj.class_name != "Generator":
            raise ValueError(f"{path}: {key} is a {obj.class_name}, not a StyleGAN2-ADA "
                             "Generator")
        if obj.state.get("_init_args"):
            raise ValueError(f"{path}: {key} was built with positional args, which this "
                             "converter does not map; pass the hyper-parameters as kwargs")
        init_kwargs = obj.state.get("_init_kwargs")
        init_kwargs = dict(init_kwargs) if init_kwargs is not None else None
        try:
            return _state_dict_of(obj), init_kwargs, obj.state.get("num_ws")
        except ConversionError as e:
            raise ConversionError(f"{path}: {key}: {e}") from None
    if isinstance(obj, dict) and all(isinstance(v, np.ndarray) for v in obj.values()):
        return dict(obj), None, None
    raise ValueError(f"{path}: neither a StyleGAN2-ADA snapshot with {key!r} nor a state_dict "
                     f"(top level is {type(obj).__name__})")


def convert(path, kwargs_json=None, key="G_ema", **G_kwargs):
    """(stylegan2.Generator, variables) from a snapshot .pkl or a G state_dict file.

    Hyper-parameters: the snapshot's init kwargs, updated by `kwargs_json` (a file) and then by
    `G_kwargs` (official layout or Generator field names, e.g. dtype="bfloat16").
    """
    try:
        return _convert(path, kwargs_json, key, G_kwargs)
    except (TypeError, KeyError, AttributeError, IndexError, OverflowError,
            ZeroDivisionError) as e:  # an odd tree or odd settings: one line
        raise ConversionError(f"{path}: not laid out as an official StyleGAN2-ADA generator "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


def _convert(path, kwargs_json, key, G_kwargs):  # noqa: N803 (official name)
    state_dict, init_kwargs, num_ws = read_checkpoint(path, key=key)
    kwargs = dict(init_kwargs or {})
    explicit = {}
    if kwargs_json is not None:
        loaded = input_files.read_json(kwargs_json)
        loaded = loaded.get("G_kwargs", loaded)
        if not isinstance(loaded, dict):
            raise ConversionError(f"{kwargs_json}: G_kwargs is not a JSON object")
        explicit.update(loaded)
    explicit.update(G_kwargs)
    for section in ("mapping_kwargs", "synthesis_kwargs"):  # merge sections, don't replace
        if section in explicit:
            if not isinstance(explicit[section], dict) or not isinstance(
                    kwargs.get(section) or {}, dict):
                raise ConversionError(f"{section} is not a dict of settings")
            explicit[section] = {**(kwargs.get(section) or {}), **explicit[section]}
    kwargs.update(explicit)
    if not kwargs:
        raise ValueError(f"{path} holds no hyper-parameters (a state_dict): pass them, e.g. "
                         "convert(path, kwargs_json='G_kwargs.json') or convert(path, **G_kwargs)")
    try:
        module = build_module(module_kwargs_from_G_kwargs(kwargs))
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None
    if num_ws is not None and checks.integer(num_ws, "num_ws", 0, 1 << 16) != module.num_ws:
        raise ValueError(f"{path}: the snapshot's G has {num_ws} ws, the rebuilt one "
                         f"{module.num_ws}; check the hyper-parameters")
    try:
        return module, variables_from_state_dict(state_dict, module)
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None


def _variable_shapes(module):
    """ShapeDtypeStructs of `module`'s variables (traced, nothing allocated)."""
    return jax.eval_shape(lambda: stylegan2.init_variables(module, jax.random.key(0)))


def load_converted(directory):
    """(stylegan2.Generator, variables) from a directory written by `save_converted`; its
    meta.json is checked as a snapshot's settings are, its variables against it."""
    module, variables, _ = checks.load_converted(directory, KIND, build_module,
                                                 _variable_shapes)
    return module, variables


def save_converted(directory, module, variables, source):
    """Write variables + meta (kind, module_kwargs, source) with `variables_io`."""
    meta = {"kind": KIND, "module_kwargs": module_kwargs_of(module), "source": str(source)}
    variables_io.save_variables(directory, variables, meta)


def sample_grid(module, variables, rng, cols=8, max_rows=16, truncation_psi=1.0):
    """uint8 (rows*R, cols*R, C) grid: one row per class (first max_rows) or unconditional rows."""
    rows = min(module.c_dim, max_rows) if module.c_dim > 0 else 4
    fn = jax.jit(lambda z, c: module.apply(variables, z, c, truncation_psi=truncation_psi,
                                           noise_mode="const"))
    lines = []
    for row, key in enumerate(jax.random.split(rng, rows)):
        z = jax.random.normal(key, (cols, module.z_dim))
        c = jax.nn.one_hot(jnp.full((cols,), row), module.c_dim) if module.c_dim > 0 else None
        img = np.asarray(fn(z, c))
        lines.append(np.concatenate(list(img), axis=1))
    grid = np.concatenate(lines, axis=0)
    return np.clip(np.rint((grid + 1.0) * 127.5), 0, 255).astype(np.uint8)


def write_samples_png(path, grid):
    """Save a uint8 (H, W, C) grid as a PNG (C 1 -> grey, 3 or more -> RGB of the first three)."""
    files.write_png(path, grid)


def main(argv=None):
    """CLI: convert a checkpoint into a new OUT_DIR (variables + samples.png); errors are one
    line on stderr with exit status 2 (`converters.cli`)."""
    parser = cli.ArgumentParser(prog="python -m converters.stylegan2_ada",
                                description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="network-snapshot-*.pkl or a G_ema state_dict file")
    parser.add_argument("out_dir")
    parser.add_argument("--kwargs_json", default=None,
                        help="hyper-parameters (official init-kwargs layout) for state_dicts")
    parser.add_argument("--key", default="G_ema", help="which network of a snapshot to take")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample grid's z")
    parser.add_argument("--truncation_psi", type=float, default=1.0, help="for the grid only")
    cli.add_overwrite_flag(parser)
    args = parser.parse_args(argv)

    def write(staged):
        checks.number(args.truncation_psi, "--truncation_psi", -10.0, 10.0)
        module, variables = convert(args.checkpoint, kwargs_json=args.kwargs_json, key=args.key)
        save_converted(staged, module, variables, os.path.abspath(args.checkpoint))
        grid = sample_grid(module, variables, jax.random.key(args.seed),
                           truncation_psi=args.truncation_psi)
        write_samples_png(os.path.join(staged, "samples.png"), grid)
        return (f"wrote {args.out_dir} ({module.img_resolution}px, c_dim {module.c_dim}, "
                f"num_ws {module.num_ws}) and samples.png")

    return cli.run(write, args.out_dir, args.overwrite)


if __name__ == "__main__":
    sys.exit(main())
