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
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from converters import cli, torch_pickle
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
        meta = dict(meta)
        self.class_name = meta.get("class_name")
        self.state = meta.get("state") or {}
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
    if not class_name.endswith(("training.networks.Generator", "networks_stylegan2.Generator")):
        raise ValueError(f"class_name {class_name!r} is not the StyleGAN2(-ADA) Generator")
    for key, value in G_kwargs.items():
        if key in _FIELDS:
            out[key] = value
        elif key not in _IGNORED:
            raise ValueError(f"unsupported StyleGAN2-ADA generator kwarg {key!r}={value!r}")
    for key in ("z_dim", "c_dim", "w_dim", "img_resolution"):
        if key not in out:
            raise ValueError(f"generator kwargs lack {key!r} (have {sorted(out)})")
    if "resample_filter" in out:
        out["resample_filter"] = tuple(int(t) if float(t).is_integer() else float(t)
                                       for t in np.asarray(out["resample_filter"]).ravel())
    if out.get("conv_clamp") is not None:
        out["conv_clamp"] = float(out["conv_clamp"])
    return out


def build_module(module_kwargs):
    """`stylegan2.Generator` from JSON-like kwargs (lists become the tuples Flax can hash)."""
    kwargs = dict(module_kwargs)
    if "resample_filter" in kwargs:
        kwargs["resample_filter"] = tuple(kwargs["resample_filter"])
    return stylegan2.Generator(**kwargs)


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
    want = jax.eval_shape(lambda: stylegan2.init_variables(module, jax.random.key(0)))
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
        node[names[-1]] = jnp.asarray(value)
    return variables


def _state_dict_of(obj, prefix=""):
    """Flatten a persistent module tree into torch `state_dict` keys -> numpy arrays."""
    state = obj.state
    skip = set(state.get("_non_persistent_buffers_set") or ())
    out = {}
    for name, value in dict(state.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = np.asarray(value)
    for name, value in dict(state.get("_buffers") or {}).items():
        if value is not None and name not in skip:
            out[prefix + name] = np.asarray(value)
    for name, child in dict(state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, _PersistentObject):
            raise ValueError(f"{prefix + name} is a {type(child).__name__}, not a module of the "
                             "official StyleGAN2-ADA code")
        out.update(_state_dict_of(child, prefix + name + "."))
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
        return _state_dict_of(obj), init_kwargs, obj.state.get("num_ws")
    if isinstance(obj, dict) and all(isinstance(v, np.ndarray) for v in obj.values()):
        return dict(obj), None, None
    raise ValueError(f"{path}: neither a StyleGAN2-ADA snapshot with {key!r} nor a state_dict "
                     f"(top level is {type(obj).__name__})")


def convert(path, kwargs_json=None, key="G_ema", **G_kwargs):
    """(stylegan2.Generator, variables) from a snapshot .pkl or a G state_dict file.

    Hyper-parameters: the snapshot's init kwargs, updated by `kwargs_json` (a file) and then by
    `G_kwargs` (official layout or Generator field names, e.g. dtype="bfloat16").
    """
    state_dict, init_kwargs, num_ws = read_checkpoint(path, key=key)
    kwargs = dict(init_kwargs or {})
    explicit = {}
    if kwargs_json is not None:
        with open(kwargs_json) as f:
            loaded = json.load(f)
        explicit.update(loaded.get("G_kwargs", loaded))
    explicit.update(G_kwargs)
    for section in ("mapping_kwargs", "synthesis_kwargs"):  # merge sections, don't replace
        if section in explicit:
            explicit[section] = {**dict(kwargs.get(section) or {}), **dict(explicit[section])}
    kwargs.update(explicit)
    if not kwargs:
        raise ValueError(f"{path} holds no hyper-parameters (a state_dict): pass them, e.g. "
                         "convert(path, kwargs_json='G_kwargs.json') or convert(path, **G_kwargs)")
    module = build_module(module_kwargs_from_G_kwargs(kwargs))
    if num_ws is not None and int(num_ws) != module.num_ws:
        raise ValueError(f"{path}: the snapshot's G has {num_ws} ws, the rebuilt one "
                         f"{module.num_ws}; check the hyper-parameters")
    return module, variables_from_state_dict(state_dict, module)


def load_converted(directory):
    """(stylegan2.Generator, variables) from a directory written by `save_converted`."""
    variables, meta = variables_io.load_variables(directory)
    if meta.get("kind") != KIND:
        raise ValueError(f"{directory} holds {meta.get('kind')!r} variables, not {KIND!r}")
    return build_module(meta["module_kwargs"]), variables


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
