"""Convert official StyleGAN-XL snapshots (stem and superresolution G) to Flax, without torch.

Input: a `network-snapshot-*.pkl` (or `.pkl.xz`) as the official training loop writes it with
dill: a dict with `G`, `D`, `G_ema`, ... whose generator modules are persistent objects
(`torch_utils.persistence`). `G_ema` is converted (`key=` picks another entry). The source text
every persistent object carries is dropped unread; the pickle is read by
`converters.torch_pickle` with an allow-list of globals, so nothing in the file runs:
  * the globals of the generator tree map to inert stand-ins (persistent objects, EasyDict, the
    class embedding's `torch.nn.Embedding`);
  * every other global the file names (the `ProjectedDiscriminator` in `D` names pg_modules,
    timm and many torch.nn classes) that the reader does not allow is read as an inert
    `torch_pickle.UnknownGlobal` record (`load(..., stub_unknown=True)`): building or "calling"
    it only records its arguments, and nothing of it is imported. Such a record is refused
    (UnsafePickleError, naming the global) if it turns up anywhere inside the converted
    network, so only the parts that are not converted (D) may hold them.
Names (torch -> Flax): `mapping.fc0.weight` -> params/mapping/fc0/weight transposed to
(in, out), conv weights OIHW -> (k, k, in, out), `synthesis.input.weight` transposed,
buffers (w_avg, magnitude_ema, up/down_filter, transform, freqs, phases) -> buffers/...
Hyper-parameters come from the live attributes of the pickled modules (`layer_names`, each
layer's channels, factors, padding, clamp and stored filters), not from `_init_kwargs`, which a
superresolution snapshot keeps stale from its stem.

CLI:  python -m converters.stylegan_xl snapshot.pkl OUT_DIR [--overwrite] [--seed S] [--cols N]
writes `mgr_jax.variables_io` variables with meta {"kind": "stylegan_xl", "module_kwargs",
"source"} and OUT_DIR/samples.png (one row per class, at most 16). OUT_DIR must not exist, or
with --overwrite be an earlier converted directory; errors are one line on stderr, status 2.
"""
import functools
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from converters import checks, cli, input_files, torch_pickle
from converters import stylegan2_ada as sg2_converter
from converters.errors import ConversionError
from converters.pickle_globals import unknown_global
from converters.stylegan_xl_kwargs import DTYPES, MAX_SIZE, build_module, module_kwargs_of
from converters.torch_tensors import short_repr
from mgr_jax import variables_io
from mgr_jax.models import stylegan_xl

KIND = "stylegan_xl"
_GENERATOR_CLASSES = ("Generator", "SuperresGenerator")
# Builtin types a dill `_load_type(name)` may give back; any other name becomes a stub.
_SAFE_TYPES = {"NoneType": type(None), "bool": bool, "int": int, "float": float,
               "complex": complex, "str": str, "bytes": bytes, "list": list, "tuple": tuple,
               "dict": dict, "set": set, "frozenset": frozenset, "slice": slice, "range": range}
_MAX_UPSAMPLED = 16 * checks.MAX_RESOLUTION  # a layer's upsampled, padded feature map




# ---------------------------------------------------------------------------------------------
# Reading the pickle


class _PersistentObject:
    """What `persistence._reconstruct_persistent_obj(meta)` becomes: class name and state only.

    It keeps a reference to the state dict, never a copy: a pickle may hand one memoized dict
    to any number of calls, and copies would escape the reader's memory budget.
    """

    def __init__(self, meta):
        state = meta.get("state") if isinstance(meta, dict) else None
        if not isinstance(meta, dict) or not isinstance(state, (dict, type(None))):
            raise ConversionError("a persistent object whose meta is not a dict with a dict "
                                  "'state'")
        self.class_name = meta.get("class_name")
        self.state = {} if state is None else state
        # meta["module_src"] (the pickled source text) is deliberately not kept.


class _EasyDict(dict):
    """Stand-in for `dnnlib.util.EasyDict` (init kwargs): a plain dict."""


def _load_type(name):
    """dill._dill._load_type: harmless builtin types only; anything else is a stub."""
    return _SAFE_TYPES.get(name) or unknown_global(f"dill._dill._load_type({name!r})")


def _own_globals():
    """The generator tree's globals, each mapped to a harmless stand-in."""
    embed = "torch.nn.modules.sparse.Embedding"
    return {"torch_utils.persistence._reconstruct_persistent_obj": _PersistentObject,
            "dnnlib.util.EasyDict": _EasyDict,
            embed: torch_pickle.record_object(embed),
            "dill._dill._load_type": _load_type}


def read_snapshot(path, key="G_ema"):
    """The persistent-object tree of `key` in a StyleGAN-XL snapshot; refuses stubs in it."""
    if not isinstance(key, str):
        raise ConversionError(f"key={short_repr(key)} is not the name of a snapshot entry")
    path = input_files.regular_file(path)
    # D (a ProjectedDiscriminator pickled by reference: timm, pg_modules, torch.nn) is read as
    # inert records of its unknown globals; what G_ema uses must be allowed (checked below).
    obj = torch_pickle.load(path, extra_globals=_own_globals(), stub_unknown=True)
    if isinstance(obj, _PersistentObject):  # a generator pickled on its own
        obj = {key: obj}
    if not isinstance(obj, dict) or key not in obj:
        names = sorted(str(k)[:40] for k in list(obj)[:9]) if isinstance(obj, dict) else None
        what = f"keys {names}" if isinstance(obj, dict) else type(obj).__name__
        raise ConversionError(f"{path}: not a StyleGAN-XL snapshot with {key!r} ({what})")
    net = obj[key]
    found = torch_pickle.find_unknown_global(net)
    if found is not None:
        raise torch_pickle.UnsafePickleError(
            f"refusing to load {found}: {key} of {path} uses it and it is not in the allow-list "
            "(nothing of it was imported or run)")
    if not isinstance(net, _PersistentObject) or net.class_name not in _GENERATOR_CLASSES:
        name = getattr(net, "class_name", type(net).__name__)
        raise ConversionError(f"{path}: {key} is a {short_repr(name)}, not a StyleGAN-XL "
                              f"{' / '.join(_GENERATOR_CLASSES)}")
    return net


# ---------------------------------------------------------------------------------------------
# Module tree -> Generator fields and variables


def _attr(obj, name, where):
    state = obj.state
    if name not in state:
        raise ConversionError(f"{where} lacks the attribute {name!r}")
    value = state[name]
    return value.item() if isinstance(value, np.generic) else value


def _child(obj, name, where):
    modules = obj.state.get("_modules") or {}
    if not isinstance(modules, dict) or modules.get(name) is None:
        raise ConversionError(f"{where} lacks the module {name!r}")
    return modules[name]


def _tensor(obj, name, where, kind="_parameters"):
    entries = obj.state.get(kind) or {}
    value = entries.get(name) if isinstance(entries, dict) else None
    if value is None:
        raise ConversionError(f"{where} lacks {kind[1:-1]} {name!r}")
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        raise ConversionError(f"{where}.{name} is a {type(value).__name__}, not a tensor")
    return np.asarray(value, np.float32)


def _fc(obj, where, activation, lr=None):
    """(lr_multiplier, {"weight": (in, out), "bias"}) of a FullyConnectedLayer; checks it."""
    got = _attr(obj, "activation", where)
    if got != activation:
        raise ConversionError(f"{where}: activation {short_repr(got)}, expected {activation!r}")
    weight = _tensor(obj, "weight", where)
    if weight.ndim != 2 or not weight.size:
        raise ConversionError(f"{where}.weight has shape {weight.shape}, not (out, in)")
    bias_gain = checks.number(_attr(obj, "bias_gain", where), f"{where}.bias_gain", 0.0, 1e3,
                              positive=True)
    weight_gain = checks.number(_attr(obj, "weight_gain", where), f"{where}.weight_gain", 0.0,
                                1e3, positive=True)
    if lr is not None and not math.isclose(bias_gain, lr, rel_tol=1e-6):
        raise ConversionError(f"{where}: lr_multiplier {bias_gain}, expected {lr}")
    if not math.isclose(weight_gain, bias_gain / math.sqrt(weight.shape[1]), rel_tol=1e-6):
        raise ConversionError(f"{where}: weight_gain {weight_gain} is not lr_multiplier / "
                              f"sqrt(in_features) = {bias_gain / math.sqrt(weight.shape[1])}")
    return bias_gain, {"weight": weight.T, "bias": _tensor(obj, "bias", where)}


def _mapping(mapping, c_dim):
    """(Generator fields, params, buffers) of the MappingNetwork."""
    fields = {"mapping_layers": checks.integer(_attr(mapping, "num_layers", "mapping"),
                                               "mapping.num_layers", 0, checks.MAX_LAYERS)}
    params = {}
    lr = None
    for i in range(fields["mapping_layers"]):
        lr, params[f"fc{i}"] = _fc(_child(mapping, f"fc{i}", "mapping"), f"mapping.fc{i}",
                                   "lrelu", lr)
    fields["mapping_lr_multiplier"] = lr if lr is not None else 0.01
    if c_dim > 0:
        embed = _child(mapping, "embed", "mapping")
        if not isinstance(embed, torch_pickle.RecordedObject) or not isinstance(embed.state,
                                                                                dict):
            raise ConversionError("mapping.embed is not a torch.nn.Embedding")
        if embed.state.get("max_norm") is not None:  # would renormalise rows at lookup
            raise ConversionError("mapping.embed has max_norm set, which is not supported")
        weight = _tensor(embed, "weight", "mapping.embed")
        if weight.ndim != 2:
            raise ConversionError(f"mapping.embed.weight has shape {weight.shape}")
        fields["num_embeddings"], fields["embedding_dim"] = map(int, weight.shape)
        if fields["num_embeddings"] < c_dim:
            raise ConversionError(f"mapping.embed has {fields['num_embeddings']} rows for "
                                  f"c_dim {c_dim}")
        params["embed"] = {"weight": weight}
        _, params["embed_proj"] = _fc(_child(mapping, "embed_proj", "mapping"),
                                      "mapping.embed_proj", "lrelu", 1.0)
    buffers = {"w_avg": _tensor(mapping, "w_avg", "mapping", "_buffers")}
    return fields, params, buffers


def _pair(value):
    """A size attribute (one number or a pair) as a list of two (unchecked) values."""
    value = value.tolist() if isinstance(value, np.ndarray) else value
    if isinstance(value, (list, tuple)):
        return list(value) if len(value) == 2 else [value, value]
    return [value, value]


def _input(obj):
    """(InputSpec fields, params, buffers) of the SynthesisInput."""
    where = "synthesis.input"
    spec = {"channels": _attr(obj, "channels", where), "size": _pair(_attr(obj, "size", where)),
            "sampling_rate": _attr(obj, "sampling_rate", where),
            "bandwidth": _attr(obj, "bandwidth", where)}
    _, affine = _fc(_child(obj, "affine", where), where + ".affine", "linear", 1.0)
    params = {"weight": _tensor(obj, "weight", where).T, "affine": affine}
    buffers = {n: _tensor(obj, n, where, "_buffers") for n in ("transform", "freqs", "phases")}
    return spec, params, buffers


def _layer(obj, name):
    """(LayerSpec fields, params, buffers) of one SynthesisLayer, from its own attributes."""
    where = f"synthesis.{name}"
    filters = {}
    for which in ("up_filter", "down_filter"):
        buffers = obj.state.get("_buffers") or {}
        if isinstance(buffers, dict) and buffers.get(which) is not None:
            filters[which] = _tensor(obj, which, where, "_buffers")
    up, down = filters.get("up_filter"), filters.get("down_filter")
    stored_radial = bool(obj.state.get("down_radial", False))
    if down is not None and (stored_radial != (down.ndim == 2) or down.ndim not in (1, 2)):
        raise ConversionError(f"{where}: down_radial is {stored_radial} but down_filter has "
                              f"shape {down.shape}")
    if up is not None and up.ndim != 1:
        raise ConversionError(f"{where}: a {up.ndim}-D up_filter is not supported")
    if down is not None and down.ndim == 2 and down.shape[0] != down.shape[1]:
        raise ConversionError(f"{where}: a non-square radial down_filter {down.shape}")
    padding = _attr(obj, "padding", where)
    spec = {"name": name, "in_channels": _attr(obj, "in_channels", where),
            "out_channels": _attr(obj, "out_channels", where),
            "is_torgb": _attr(obj, "is_torgb", where),
            "conv_kernel": _attr(obj, "conv_kernel", where),
            "up_factor": _attr(obj, "up_factor", where),
            "down_factor": _attr(obj, "down_factor", where),
            "padding": padding.tolist() if isinstance(padding, np.ndarray) else padding,
            "up_taps": 1 if up is None else int(up.shape[0]),
            "down_taps": 1 if down is None else int(down.shape[0]),
            "down_radial": down is not None and down.ndim == 2,
            "conv_clamp": _attr(obj, "conv_clamp", where)}
    _, affine = _fc(_child(obj, "affine", where), where + ".affine", "linear", 1.0)
    params = {"weight": _tensor(obj, "weight", where).transpose(2, 3, 1, 0),
              "bias": _tensor(obj, "bias", where), "affine": affine}
    magnitude = _tensor(obj, "magnitude_ema", where, "_buffers")
    if not np.all(magnitude > 0):  # its inverse square root scales the layer's input
        raise ConversionError(f"{where}.magnitude_ema is {magnitude.tolist()}, not positive")
    return spec, params, {"magnitude_ema": magnitude, **filters}


def _check_layer_size(obj, spec, where):
    """The stored in_size / out_size agree with what the factors, padding and filters give."""
    in_size, out_size = _pair(_attr(obj, "in_size", where)), _pair(_attr(obj, "out_size", where))
    for axis, (n, want) in enumerate(zip(in_size, out_size, strict=True)):
        n = checks.integer(n, f"{where}.in_size", 1, MAX_SIZE)
        want = checks.integer(want, f"{where}.out_size", 1, MAX_SIZE)
        pad = spec.padding[2 * axis] + spec.padding[2 * axis + 1]
        full = (n + spec.conv_kernel - 1) * spec.up_factor + pad
        if not 1 <= full <= _MAX_UPSAMPLED:
            raise ConversionError(f"{where}: in_size {in_size} upsampled and padded is {full} "
                                  f"pixels along {'xy'[axis]}, outside 1..{_MAX_UPSAMPLED}")
        got = (full - spec.up_taps - spec.down_taps + 2 + spec.down_factor - 1) // spec.down_factor
        if got != want:
            raise ConversionError(f"{where}: in_size {in_size} gives {got} outputs along "
                                  f"{'xy'[axis]}, but out_size is {out_size}")


def _layer_names(synthesis):
    names = _attr(synthesis, "layer_names", "synthesis")
    if (not isinstance(names, (list, tuple)) or not 0 < len(names) <= checks.MAX_LAYERS
            or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names)):
        raise ConversionError(f"synthesis.layer_names={short_repr(names)} is not a list of at "
                              f"most {checks.MAX_LAYERS} distinct names")
    return names


def module_and_variables(net):
    """(stylegan_xl.Generator, variables) from a G / G_ema persistent-object tree."""
    c_dim = checks.integer(_attr(net, "c_dim", "G"), "G.c_dim", 0, checks.MAX_CLASSES)
    mapping, synthesis = _child(net, "mapping", "G"), _child(net, "synthesis", "G")
    fields, params_m, buffers_m = _mapping(mapping, c_dim)
    input_spec, params_s, buffers_s = _input(_child(synthesis, "input", "synthesis"))
    params_s, buffers_s = {"input": params_s}, {"input": buffers_s}
    layers, objs = [], []
    for name in _layer_names(synthesis):
        objs.append(_child(synthesis, name, "synthesis"))
        spec, params_s[name], buffers_s[name] = _layer(objs[-1], name)
        layers.append(spec)
    module = build_module({
        "z_dim": _attr(net, "z_dim", "G"), "c_dim": c_dim, "w_dim": _attr(net, "w_dim", "G"),
        "img_resolution": _attr(net, "img_resolution", "G"),
        "img_channels": _attr(net, "img_channels", "G"), "input_spec": input_spec,
        "layers": layers, "output_scale": _attr(synthesis, "output_scale", "synthesis"),
        **fields})
    for obj, spec in zip(objs, module.layers, strict=True):
        _check_layer_size(obj, spec, f"synthesis.{spec.name}")
    for where, obj in (("G", net), ("mapping", mapping), ("synthesis", synthesis)):
        num_ws = obj.state.get("num_ws")
        if num_ws is not None and num_ws != module.num_ws:
            raise ConversionError(f"{where}.num_ws is {short_repr(num_ws)} but layer_names "
                                  f"gives {module.num_ws} ws (input + {len(layers)} layers)")
    variables = {"params": {"mapping": params_m, "synthesis": params_s},
                 "buffers": {"mapping": buffers_m, "synthesis": buffers_s}}
    return module, _checked(module, variables)


def _checked(module, variables):
    """variables as jnp arrays, after checking tree and shapes against the module's own, and
    that every tensor is finite."""
    want = stylegan_xl.variable_shapes(module)
    got_paths = {jax.tree_util.keystr(p): v for p, v in
                 jax.tree_util.tree_flatten_with_path(variables)[0]}
    want_paths = {jax.tree_util.keystr(p): v for p, v in
                  jax.tree_util.tree_flatten_with_path(want)[0]}
    if set(got_paths) != set(want_paths):
        extra = sorted(set(got_paths) - set(want_paths))[:3]
        missing = sorted(set(want_paths) - set(got_paths))[:3]
        raise ConversionError(f"snapshot tensors do not fit the generator: extra {extra}, "
                              f"missing {missing}")
    for key, value in got_paths.items():
        if tuple(value.shape) != tuple(want_paths[key].shape):
            raise ConversionError(f"{key}: snapshot shape {value.shape} (after the layout "
                                  f"change) != model shape {want_paths[key].shape}")
    checks.finite(variables, "G")
    return jax.tree.map(jnp.asarray, variables)


_CONVERT_ERRORS = (TypeError, KeyError, AttributeError, IndexError, ValueError, OverflowError,
                   ZeroDivisionError)


def convert(path, key="G_ema", dtype="float32"):
    """(stylegan_xl.Generator, variables) from an official StyleGAN-XL snapshot (.pkl[.xz])."""
    dtype = checks.choice(dtype, "dtype", DTYPES)
    net = read_snapshot(path, key=key)
    try:
        module, variables = module_and_variables(net)
    except ConversionError as e:
        raise ConversionError(f"{path}: {key}: {e}") from None
    except _CONVERT_ERRORS as e:  # an odd tree: one line
        raise ConversionError(f"{path}: {key} is not laid out as the official StyleGAN-XL "
                              f"modules ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]})") from None
    return module.clone(dtype=jnp.dtype(dtype)), variables


# ---------------------------------------------------------------------------------------------
# Saving, loading, samples


def save_converted(directory, module, variables, source):
    """Write variables + meta (kind, module_kwargs, source) with `variables_io`."""
    meta = {"kind": KIND, "module_kwargs": module_kwargs_of(module), "source": str(source)}
    variables_io.save_variables(directory, variables, meta)


def load_converted(directory):
    """(stylegan_xl.Generator, variables) from a directory written by `save_converted`; its
    meta.json is checked as a snapshot's attributes are, its variables against it."""
    module, variables, _ = checks.load_converted(directory, KIND, build_module,
                                                 stylegan_xl.variable_shapes)
    return module, jax.tree.map(jnp.asarray, variables)


@functools.lru_cache(maxsize=8)
def jitted_apply(module):
    """jit of (variables, z, c, truncation_psi) -> images; psi traced (one compile per shape)."""
    return jax.jit(lambda v, z, c, psi: module.apply(v, z, c, truncation_psi=psi))


def main(argv=None):
    """CLI: convert a snapshot, save variables and a sample grid; exit status 2 on errors."""
    parser = cli.ArgumentParser(prog="python -m converters.stylegan_xl",
                                description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="network-snapshot-*.pkl (or .pkl.xz)")
    parser.add_argument("out_dir")
    parser.add_argument("--key", default="G_ema", help="which network of the snapshot")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample grid's z")
    parser.add_argument("--truncation_psi", type=float, default=1.0, help="for the grid only")
    parser.add_argument("--cols", type=int, default=8, help="samples per row of the grid")
    cli.add_overwrite_flag(parser)
    args = parser.parse_args(argv)

    def write(staged):
        checks.number(args.truncation_psi, "--truncation_psi", -10.0, 10.0)
        checks.integer(args.cols, "--cols", 1, 64)
        module, variables = convert(args.checkpoint, key=args.key)
        grid = sg2_converter.sample_grid(module, variables, jax.random.key(args.seed),
                                         cols=args.cols, truncation_psi=args.truncation_psi)
        save_converted(staged, module, variables, os.path.abspath(args.checkpoint))
        sg2_converter.write_samples_png(os.path.join(staged, "samples.png"), grid)
        return (f"wrote {args.out_dir} ({module.img_resolution}px, c_dim {module.c_dim}, num_ws "
                f"{module.num_ws}, {len(module.layers)} layers) and samples.png")

    return cli.run(write, args.out_dir, args.overwrite)


if __name__ == "__main__":
    sys.exit(main())
