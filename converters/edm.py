"""Official EDM network snapshots (`network-snapshot-*.pkl`) -> Flax `EDMPrecond` variables.

A snapshot is a pickled dict whose `ema` entry is the network to sample with. Its modules are
"persistent" objects: `torch_utils.persistence._reconstruct_persistent_obj(meta)`, where `meta`
holds the class name, the module's `__dict__` as `state` (parameters, buffers, submodules, the
recorded constructor kwargs) and the module's source text. The source is never looked at, let
alone run: `converters.torch_pickle` unpickles with an allow-list of globals, we map the
persistent-object constructor to a function that returns its `meta` record, and rebuild the
network from the recorded constructor kwargs. Any other global (os.system, builtins.eval, ...)
is refused, with its name, before anything from the file runs.

    python -m converters.edm network-snapshot.pkl OUT_DIR
writes `mgr_jax.variables_io.save_variables(OUT_DIR, variables, meta)` with
meta = {"kind": "edm", "module_kwargs": {...}, "source": ...}; `load_converted(OUT_DIR)` reads it.
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from converters import checks, cli, input_files, torch_pickle
from converters.errors import ConversionError
from mgr_jax import variables_io
from mgr_jax.models import edm

_PERSISTENT = "torch_utils.persistence._reconstruct_persistent_obj"
_MODULE_DICT = "torch.nn.modules.container.ModuleDict"
_EASY_DICT = "dnnlib.util.EasyDict"

# What SongUNet gives each UNetBlock; a snapshot recording anything else was built by different
# code than the one ported here, and converting it silently would give a wrong network.
_SONGUNET_BLOCK = dict(num_heads=1, eps=1e-6, resample_proj=True, adaptive_scale=False)


class _Persistent:
    """What a persistent object becomes here: its class name, state and init kwargs only.

    It keeps references to the state and the init kwargs, never copies: a pickle may hand one
    memoized dict to any number of calls, and copies would escape the reader's memory budget.
    """

    def __init__(self, meta):
        if not isinstance(meta, dict) or "state" not in meta or "class_name" not in meta:
            raise ConversionError("a persistent object without class_name/state")
        if not isinstance(meta["class_name"], str) or not isinstance(meta["state"], dict):
            raise ConversionError("a persistent object whose class_name is not a string or "
                                  "whose state is not a dict")
        self.class_name = meta["class_name"]
        self.state = meta["state"]
        kwargs = self.state.get("_init_kwargs")
        if not isinstance(kwargs, (dict, type(None))):
            raise ConversionError(f"{self.class_name}: _init_kwargs is not a dict")
        self.init_kwargs = {} if kwargs is None else kwargs
        # meta["module_src"] (the source text) is deliberately dropped unread.

    @property
    def short_name(self):
        return self.class_name.rsplit(".", 1)[-1]


class _EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict (a dict with attribute access) in snapshot entries."""


def _reconstruct_persistent(meta):
    """Stand-in for the persistent-object constructor: keep the record, run nothing."""
    return _Persistent(meta)


def _submodules(obj):
    """(name, child) pairs of a persistent module record or a recorded torch ModuleDict."""
    state = obj.state if isinstance(obj, _Persistent) else _module_state(obj)
    modules = state.get("_modules") or {}
    if not isinstance(modules, dict):
        raise ConversionError(f"the _modules of a {type(obj).__name__} is not a dict")
    return [(str(k), v) for k, v in modules.items() if v is not None]


def _module_state(obj):
    """The __dict__ recorded for a non-persistent torch module (ModuleDict)."""
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        raise ConversionError(f"cannot read the state of {type(obj).__name__}")
    return state


def _walk(root):
    """[(dotted path, module)] of the tree under `root`, parents first, each module once.

    A module reached twice (shared by two parents, or a cycle) is refused: the official
    networks share none, and walking every path of such a tree takes exponential time.
    """
    out, seen, todo = [], set(), [("", root)]
    while todo:
        path, obj = todo.pop()
        if id(obj) in seen:
            raise ConversionError(f"module {path} appears twice in the network (shared by two "
                                  "parents, or a cycle)")
        seen.add(id(obj))
        out.append((path, obj))
        todo.extend((f"{path}.{name}" if path else name, child)
                    for name, child in reversed(_submodules(obj)))
    return out


def _tensors(obj):
    """Flatten a module tree into {dotted name: (kind, array)}, kind "param" or "buffer"."""
    out = {}
    for path, module in _walk(obj):
        state = module.state if isinstance(module, _Persistent) else _module_state(module)
        for kind, key in (("param", "_parameters"), ("buffer", "_buffers")):
            entries = state.get(key) or {}
            if not isinstance(entries, dict):
                raise ConversionError(f"{path or 'the network'}: {key} is not a dict")
            for name, value in entries.items():
                if value is None:
                    continue
                full = f"{path}.{name}" if path else str(name)
                if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
                    raise ConversionError(f"{key[1:-1]} {full} is a {type(value).__name__}, "
                                          "not a tensor of numbers")
                out[full] = (kind, value)
    return out


def _records(obj):
    """Every persistent record in the tree: [(dotted path, _Persistent)]."""
    return [(path, rec) for path, rec in _walk(obj) if isinstance(rec, _Persistent)]


def _flax_path(torch_name, ndim):
    """'model.enc.16x16_block0.conv0.weight' -> ('params', 'model', 'enc_16x16_block0', ...)."""
    parts = torch_name.split(".")
    if len(parts) >= 3 and parts[1] in ("enc", "dec"):
        parts = [parts[0], f"{parts[1]}_{parts[2]}"] + parts[3:]
    *mods, leaf = parts
    if leaf == "freqs":
        return ("buffers", *mods, "freqs")
    if leaf == "weight":
        leaf = "scale" if ndim == 1 else "kernel"
    return ("params", *mods, leaf)


def _to_flax(array):
    """Torch layout -> Flax layout: Linear (out, in) -> (in, out), conv OIHW -> HWIO."""
    if array.ndim == 2:
        return array.T
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    return array


def _check_layers(records):
    """Refuse snapshots whose recorded layer settings differ from what the port hard-codes."""
    known = ("EDMPrecond", "SongUNet", "UNetBlock", "Conv2d", "Linear", "GroupNorm",
             "PositionalEmbedding", "FourierEmbedding")
    for path, rec in records:
        kw, kind = rec.init_kwargs, rec.short_name
        if kind not in known:
            raise ConversionError(f"{path}: unsupported layer {rec.class_name}")
        if kind == "UNetBlock":
            for key, want in _SONGUNET_BLOCK.items():
                if key in kw and kw[key] != want:
                    raise ConversionError(
                        f"{path}: UNetBlock {key}={kw[key]!r}, the port supports {want!r}")
            if "skip_scale" in kw and not np.isclose(float(kw["skip_scale"]), np.sqrt(0.5)):
                raise ConversionError(f"{path}: UNetBlock skip_scale {kw['skip_scale']}")
        if kind == "GroupNorm":
            if (kw.get("eps", 1e-5) != 1e-6 or kw.get("num_groups", 32) != 32
                    or kw.get("min_channels_per_group", 4) != 4):
                raise ConversionError(f"{path}: GroupNorm settings {kw} (SongUNet uses "
                                            "eps 1e-6, 32 groups, 4 channels per group)")
        if kind == "PositionalEmbedding":
            if kw.get("max_positions", 10000) != 10000 or kw.get("endpoint", False) is not True:
                raise ConversionError(f"{path}: PositionalEmbedding settings {kw}")


def _settings_from(ema):
    """Constructor kwargs for `edm.build` from the recorded EDMPrecond init kwargs."""
    if not isinstance(ema, _Persistent) or ema.short_name != "EDMPrecond":
        got = ema.class_name if isinstance(ema, _Persistent) else type(ema).__name__
        raise ConversionError(f"snapshot['ema'] is {got}, expected an EDMPrecond")
    kw = dict(ema.init_kwargs)
    args = ema.state.get("_init_args", ()) or ()
    if args:
        # The official signature is (img_resolution, img_channels, label_dim, use_fp16,
        # sigma_min, sigma_max, sigma_data, model_type, **model_kwargs).
        names = ["img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_min",
                 "sigma_max", "sigma_data", "model_type"]
        kw.update(dict(zip(names, args)))
    if kw.get("model_type", "DhariwalUNet") != "SongUNet":
        raise ConversionError(
            f"model_type {kw.get('model_type', 'DhariwalUNet')!r}: only SongUNet (DDPM++ / "
            "NCSN++) networks are supported")
    for key in ("sigma_data", "sigma_min", "sigma_max"):
        # Attributes hold the values actually used, init kwargs only what was passed.
        if key in ema.state and not isinstance(ema.state[key], (dict, list)):
            kw[key] = ema.state[key]
    return check_settings(kw)


def _sigma(value, name, allow_inf=False):
    """A noise level: finite and >= 0 (sigma_max may be infinite, the official default)."""
    if isinstance(value, np.generic):
        value = value.item()
    if allow_inf and isinstance(value, (str, float)) and value in ("inf", float("inf")):
        return float("inf")
    return checks.number(value, name, 0.0, 1e6)


def check_settings(settings):
    """EDMPrecond / SongUNet settings (official keyword names) with every value checked: the
    kind and range of each, sizes within `converters.checks` limits; the full settings for
    `edm.build`. ConversionError naming the first bad one."""
    if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
        raise ConversionError("the EDMPrecond settings are not a dict of keyword names")
    unknown = sorted(set(settings) - set(edm.SONGUNET_DEFAULTS))
    if unknown:
        raise ConversionError(f"EDMPrecond settings the port does not know: {unknown}")
    kw = dict(edm.SONGUNET_DEFAULTS, **settings)
    out = {"model_type": checks.choice(kw["model_type"], "model_type", ("SongUNet",)),
           "embedding_type": checks.choice(kw["embedding_type"], "embedding_type",
                                           ("positional", "fourier")),
           "encoder_type": checks.choice(kw["encoder_type"], "encoder_type",
                                         ("standard", "skip", "residual")),
           "decoder_type": checks.choice(kw["decoder_type"], "decoder_type",
                                         ("standard", "skip")),
           "use_fp16": checks.boolean(kw["use_fp16"], "use_fp16"),
           "img_resolution": checks.integer(kw["img_resolution"], "img_resolution", 1,
                                            checks.MAX_RESOLUTION),
           "img_channels": checks.integer(kw["img_channels"], "img_channels", 1,
                                          checks.MAX_IMAGE_CHANNELS),
           "label_dim": checks.integer(kw["label_dim"], "label_dim", 0, checks.MAX_CLASSES),
           "augment_dim": checks.integer(kw["augment_dim"], "augment_dim", 0,
                                         checks.MAX_CHANNELS),
           "model_channels": checks.integer(kw["model_channels"], "model_channels", 1,
                                            checks.MAX_CHANNELS),
           "channel_mult_emb": checks.integer(kw["channel_mult_emb"], "channel_mult_emb", 1,
                                              64),
           "channel_mult_noise": checks.integer(kw["channel_mult_noise"],
                                                "channel_mult_noise", 1, 64),
           "num_blocks": checks.integer(kw["num_blocks"], "num_blocks", 1, 64),
           "dropout": checks.number(kw["dropout"], "dropout", 0.0, 1.0),
           "label_dropout": checks.number(kw["label_dropout"], "label_dropout", 0.0, 1.0),
           "sigma_min": _sigma(kw["sigma_min"], "sigma_min"),
           "sigma_max": _sigma(kw["sigma_max"], "sigma_max", allow_inf=True),
           "sigma_data": checks.number(kw["sigma_data"], "sigma_data", 0.0, 1e6, positive=True),
           "channel_mult": checks.integers(kw["channel_mult"], "channel_mult", 1, 64, 16),
           "attn_resolutions": checks.integers(kw["attn_resolutions"], "attn_resolutions", 1,
                                               checks.MAX_ATTENTION_RESOLUTION, 16),
           "resample_filter": checks.integers(kw["resample_filter"], "resample_filter", 0,
                                              1 << 16, checks.MAX_FILTER_TAPS)}
    levels = len(out["channel_mult"])
    widest = out["model_channels"] * max(out["channel_mult"] + (out["channel_mult_emb"],
                                                                out["channel_mult_noise"]))
    if not levels or out["img_resolution"] % (1 << (levels - 1)):
        raise ConversionError(f"img_resolution={out['img_resolution']} does not halve "
                              f"{levels - 1} times (channel_mult has {levels} levels)")
    if widest > checks.MAX_CHANNELS:
        raise ConversionError(f"model_channels={out['model_channels']} times the channel "
                              f"multipliers gives {widest} channels, past "
                              f"{checks.MAX_CHANNELS}")
    if not out["resample_filter"] or not sum(out["resample_filter"]):
        raise ConversionError(f"resample_filter={list(out['resample_filter'])} sums to 0")
    return out


def _assemble(module, tensors):
    """Variables pytree of `module` filled from {torch name: (kind, array)}; strict both ways."""
    shapes = _variable_shapes(module)
    wanted = {tuple(getattr(k, "key", k) for k in path): leaf.shape
              for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)}
    variables, seen = {}, set()
    for name, (kind, array) in sorted(tensors.items()):
        if name.endswith("resample_filter"):
            continue  # fixed FIR filters, rebuilt from the resample_filter setting (checked)
        path = _flax_path(name, array.ndim)
        value = _to_flax(np.asarray(array, np.float32))
        if path not in wanted:
            raise ConversionError(f"tensor {name} {array.shape} has no place in the port")
        if tuple(value.shape) != tuple(wanted[path]):
            raise ConversionError(
                f"tensor {name}: shape {array.shape} does not fit {'/'.join(path)} "
                f"{wanted[path]}")
        node = variables
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
        seen.add(path)
    missing = sorted("/".join(p) for p in set(wanted) - seen)
    if missing:
        raise ConversionError(f"snapshot lacks {len(missing)} tensors, e.g. {missing[0]}")
    return variables


def _check_filters(tensors, resample_filter):
    """Every stored resample_filter buffer must be the one the setting implies."""
    want = edm.resample_buffer(resample_filter)
    for name, (_, array) in tensors.items():
        if name.endswith("resample_filter"):
            got = np.asarray(array, np.float32).reshape(array.shape[-2:])
            if got.shape != want.shape or not np.allclose(got, want, atol=1e-7):
                raise ConversionError(f"{name} differs from resample_filter "
                                            f"{list(resample_filter)}")


def read_snapshot(path, key="ema"):
    """Unpickle `path` safely and return snapshot[key] as a record tree (no tensors converted)."""
    path = input_files.regular_file(path)
    data = torch_pickle.load(path, extra_globals={
        _PERSISTENT: _reconstruct_persistent,
        _MODULE_DICT: torch_pickle.record_object(_MODULE_DICT),
        _EASY_DICT: _EasyDict,
    })
    if isinstance(data, _Persistent):
        return data  # a bare pickled network rather than a training snapshot
    if not isinstance(data, dict) or key not in data:
        if isinstance(data, dict):
            keys = sorted(map(str, data))
            keys = keys if len(keys) <= 8 else keys[:8] + [f"... {len(keys) - 8} more"]
        else:
            keys = type(data).__name__
        raise ConversionError(f"{path}: not an EDM snapshot (no {key!r} entry; has {keys})")
    return data[key]


def convert(path, key="ema"):
    """(EDMPrecond module, variables) for the `key` network of an official EDM snapshot."""
    net = read_snapshot(path, key)
    try:
        settings = _settings_from(net)
        module = edm.build(**settings)
        _check_layers(_records(net))
        tensors = _tensors(net)
        _check_filters(tensors, module.resample_filter)
        return module, checks.finite(_assemble(module, tensors), key)
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None
    except (TypeError, KeyError, AttributeError, IndexError, ValueError, OverflowError,
            ZeroDivisionError) as e:  # an odd tree: one line
        raise ConversionError(f"{path}: {key} is not laid out as the official EDM modules "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


def save(path, out_dir, key="ema"):
    """Convert `path` and write it to `out_dir` (variables_io layout); returns the meta dict."""
    module, variables = convert(path, key)
    meta = {"kind": "edm", "module_kwargs": edm.module_kwargs(module),
            "source": {"path": os.path.abspath(path), "key": key}}
    variables_io.save_variables(out_dir, variables, meta)
    return meta


def _variable_shapes(module):
    """ShapeDtypeStructs of `module`'s variables (traced, nothing allocated)."""
    res, ch = module.img_resolution, module.img_channels
    return jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, res, res, ch)),
                          jnp.ones((1,)),
                          jnp.zeros((1, module.label_dim)) if module.label_dim else None)


def load_converted(out_dir):
    """(module, variables) from a directory written by `save` / the command line; its
    meta.json settings are checked as a snapshot's, its variables against them."""
    module, variables, _ = checks.load_converted(
        out_dir, "edm", lambda kw: edm.build(**check_settings(kw)), _variable_shapes)
    variables = jax.tree.map(lambda a: np.asarray(a, np.float32), variables)
    return module, variables


def main(argv=None):
    """Command line: convert a snapshot into a new OUT_DIR; one-line error and exit status 2
    on bad input (`converters.cli`)."""
    parser = cli.ArgumentParser(
        prog="python -m converters.edm",
        description="Convert an official EDM network snapshot (.pkl) to Flax variables.")
    parser.add_argument("snapshot", help="network-snapshot-*.pkl written by EDM's training loop")
    parser.add_argument("out_dir", help="directory to write (meta.json + variables/)")
    parser.add_argument("--key", default="ema", help="snapshot entry to convert (default ema)")
    cli.add_overwrite_flag(parser)
    args = parser.parse_args(argv)

    def write(staged):
        kw = save(args.snapshot, staged, args.key)["module_kwargs"]
        return (f"wrote {args.out_dir}: EDMPrecond(SongUNet {kw['img_resolution']}px, "
                f"label_dim {kw['label_dim']}, {kw['embedding_type']})")

    return cli.run(write, args.out_dir, args.overwrite)


if __name__ == "__main__":
    sys.exit(main())
