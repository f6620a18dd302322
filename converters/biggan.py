"""Convert an official BigGAN-PyTorch `G_ema.pth` / `G.pth` state_dict to Flax variables.

    python -m converters.biggan G_ema.pth OUT_DIR [--kwargs_json=G_kwargs.json] [--G_ch=64 ...]

The file is read with the allow-list unpickler (`converters.torch_pickle`): no code in it runs.
Constructor settings use the official `Generator` keyword names. Everything the state_dict
shows (resolution, G_ch, n_classes, dim_z, shared_dim, hier, G_shared, G_attn, bottom_width,
num_G_SVs, G_param) is read from the tensor shapes; a keyword that disagrees is an error naming
the keyword and the tensor. The rest (BN_eps, SN_eps, norm_style, num_G_SV_itrs) cannot be seen
in the weights and takes the official defaults unless given.
Name map (torch -> Flax): `blocks.i.j.` -> `blocks_i_j/`, `output_layer.j.` -> `output_layer_j/`,
`weight` -> `kernel` (OIHW -> HWIO, (out, in) -> (in, out)) or `embedding`, `stored_mean/var` ->
batch_stats `mean/var`, `u0..uk` -> spectral_norm `u` (k, out); `sv*` (logging only) dropped.
"""
import dataclasses
import json
import os
import re
import sys
import warnings

import flax
import jax
import jax.numpy as jnp
import numpy as np

from converters import checks, cli, input_files, torch_pickle
from converters.errors import ConversionError
from converters.torch_tensors import short_repr
from mgr_jax import variables_io
from mgr_jax.models.biggan import _ARCH_MULTIPLIERS, BigGAN

# Official Generator defaults for the settings the module uses.
OFFICIAL_DEFAULTS = {
    "resolution": 128, "n_classes": 1000, "G_ch": 64, "dim_z": 128, "shared_dim": 0,
    "hier": False, "G_shared": True, "G_attn": "64", "norm_style": "bn", "num_G_SVs": 1,
    "num_G_SV_itrs": 1, "bottom_width": 4, "G_kernel_size": 3, "BN_eps": 1e-5, "SN_eps": 1e-12,
    "G_param": "SN",
}
# Official keywords that only matter for training, initialisation or multi-GPU BatchNorm.
_TRAINING_ONLY = {
    "cross_replica", "G_init", "skip_init", "no_optim", "G_lr", "G_B1", "G_B2", "adam_eps",
    "G_mixed_precision", "G_fp16", "G_activation", "optimizer", "num_D_SVs",
}
_BLOCKS_TO_RES = {len(m[0]): r for r, m in _ARCH_MULTIPLIERS.items()}



def _read_kwargs(kwargs_json, kwargs):
    """Merge a JSON kwargs file (plain dict or {"G_kwargs": {...}}) under explicit kwargs."""
    merged = {}
    if kwargs_json is not None:
        data = input_files.read_json(kwargs_json)
        data = data.get("G_kwargs", data)
        if not isinstance(data, dict):
            raise ConversionError(f"{kwargs_json}: G_kwargs is not a JSON object of Generator "
                                  "kwargs")
        merged.update(data)
    merged.update(kwargs)
    if not all(isinstance(k, str) for k in merged):
        raise ConversionError(f"BigGAN kwargs have names that are not strings: "
                              f"{short_repr(sorted(map(repr, merged)))}")
    if merged.get("mybn"):
        raise ConversionError("mybn=True checkpoints (layers.myBN) are not supported")
    unknown = sorted(k for k in merged if k not in OFFICIAL_DEFAULTS and k not in _TRAINING_ONLY
                     and k != "mybn")
    if unknown:
        # The official Generator takes **kwargs and ignores what it does not know; so do we.
        warnings.warn(f"BigGAN kwargs ignored (not Generator settings): {unknown}")
    return {k: v for k, v in merged.items() if k in OFFICIAL_DEFAULTS}


def _attn_set(G_attn, resolutions):  # noqa: N803
    """Resolutions among `resolutions` that a G_attn string such as '16_32' selects."""
    try:
        chosen = {int(item) for item in str(G_attn).split("_") if item.strip()}
    except ValueError:
        raise ConversionError(f"G_attn={G_attn!r} is not '0' or resolutions joined by '_'")
    return sorted(r for r in resolutions if r in chosen)


def infer_kwargs(sd):
    """Settings visible in a state_dict: {kwarg: (value, evidence string)}."""
    if "linear.weight" not in sd or "blocks.0.0.conv1.weight" not in sd:
        raise ConversionError(
            "not a BigGAN Generator state_dict (no linear.weight / blocks.0.0.conv1.weight); "
            f"first keys: {list(sd)[:5]}")
    shape = lambda k: tuple(sd[k].shape)  # noqa: E731
    out = {}
    nblocks = len({k.split(".")[1] for k in sd if re.match(r"blocks\.\d+\.0\.conv1\.weight$", k)})
    if nblocks not in _BLOCKS_TO_RES:
        raise ConversionError(f"state_dict has {nblocks} generator blocks; official BigGAN "
                              f"resolutions have {sorted(_BLOCKS_TO_RES)}")
    res = _BLOCKS_TO_RES[nblocks]
    out["resolution"] = (res, f"the state_dict has {nblocks} blocks")
    mult_in, mult_out = _ARCH_MULTIPLIERS[res]
    key = "blocks.0.0.conv1.weight"
    out0 = shape(key)[0]
    if out0 % mult_out[0]:
        raise ConversionError(f"{key} has shape {shape(key)}: {out0} output channels is not a "
                              f"multiple of the {res}x{res} multiplier {mult_out[0]}")
    ch = out0 // mult_out[0]
    out["G_ch"] = (ch, f"{key} has shape {shape(key)}")
    out["G_param"] = ("SN" if "linear.u0" in sd else "none", "linear.u0 presence")
    if "linear.u0" in sd:
        nsv = len([k for k in sd if re.match(r"linear\.u\d+$", k)])
        out["num_G_SVs"] = (nsv, f"linear has {nsv} u buffers")
    gkey = "blocks.0.0.bn1.gain.weight"
    shared = "shared.weight" in sd
    out["G_shared"] = (shared, "shared.weight " + ("present" if shared else "absent"))
    lkey = "linear.weight"
    lin_out, lin_in = shape(lkey)
    if shared:
        n_classes, shared_dim = shape("shared.weight")
        out["n_classes"] = (n_classes, f"shared.weight has shape {shape('shared.weight')}")
        out["shared_dim"] = (shared_dim, f"shared.weight has shape {shape('shared.weight')}")
        chunk = shape(gkey)[1] - shared_dim
        hier = chunk > 0
        out["hier"] = (hier, f"{gkey} has shape {shape(gkey)} with shared_dim {shared_dim}")
        if hier and chunk != lin_in:
            raise ConversionError(f"{gkey} {shape(gkey)} implies z chunks of {chunk} but "
                                  f"{lkey} {shape(lkey)} takes {lin_in}")
    else:
        out["n_classes"] = (shape(gkey)[0], f"{gkey} has shape {shape(gkey)}")
        hier = False
        out["hier"] = (False, "there is no shared.weight (G_shared off), which hier needs")
    dim_z = lin_in * (nblocks + 1) if hier else lin_in
    out["dim_z"] = (dim_z, f"{lkey} has shape {shape(lkey)}" + (" (one z chunk)" if hier else ""))
    c0 = ch * mult_in[0]
    bw = int(round((lin_out / c0) ** 0.5))
    if bw * bw * c0 != lin_out:
        raise ConversionError(f"{lkey} has {lin_out} outputs, not {c0} x bottom_width^2")
    out["bottom_width"] = (bw, f"{lkey} has shape {shape(lkey)}")
    attn = [r for i, r in enumerate(2 ** (j + 3) for j in range(nblocks))
            if f"blocks.{i}.1.gamma" in sd]
    out["G_attn"] = ("_".join(map(str, attn)) or "0",
                     f"self-attention blocks found at {attn or 'no'} resolutions")
    return out


def _int_or_none(value):
    """`value` as an int if it is an integer (or an integral float), else None."""
    try:
        return checks.integer(value, "value", -(1 << 62), 1 << 62)
    except ConversionError:
        return None


def _check_kwargs(given, inferred):
    """Raise naming the first kwarg that contradicts the state_dict; return module kwargs."""
    kw = dict(OFFICIAL_DEFAULTS)
    kw.update({k: v for k, (v, _) in inferred.items()})
    res = inferred["resolution"][0]
    nslots = len(_ARCH_MULTIPLIERS[res][0]) + 1
    for name, value in given.items():
        if name not in inferred:
            kw[name] = value
            continue
        want, evidence = inferred[name]
        if name == "G_attn":
            resolutions = [2 ** (j + 3) for j in range(nslots - 1)]
            ok = _attn_set(value, resolutions) == _attn_set(want, resolutions)
        elif name == "dim_z" and inferred["hier"][0]:
            given_z = _int_or_none(value)  # the official code truncates dim_z
            ok = given_z is not None and given_z // nslots == want // nslots
        elif name == "shared_dim" and _int_or_none(value) == 0:
            ok = want == kw["dim_z"]  # 0 means "same as dim_z"
        elif name == "G_param":
            ok = (value == "SN") == (want == "SN")
        elif isinstance(want, bool):
            ok = isinstance(value, (bool, int)) and bool(value) == want
        else:
            ok = _int_or_none(value) == want
        if not ok:
            raise ConversionError(f"BigGAN kwarg {name}={value!r} does not match the checkpoint: "
                                  f"{evidence}, which means {name}={want!r}")
    return check_fields(kw)


def check_fields(kw):
    """BigGAN module settings with every value checked (kind and range; sizes within
    `converters.checks` limits); ConversionError naming the first bad one."""
    if not isinstance(kw, dict):
        raise ConversionError("the BigGAN settings are not a dict")
    fields = set(OFFICIAL_DEFAULTS) | {"precision"}
    unknown = sorted(str(k) for k in kw if k not in fields)
    if unknown:
        raise ConversionError(f"BigGAN settings the module does not take: {unknown[:5]}")
    kw = dict(OFFICIAL_DEFAULTS, **kw)
    integer, number = checks.integer, checks.number
    if not isinstance(kw["G_attn"], (str, int)) or isinstance(kw["G_attn"], bool):
        raise ConversionError(f"G_attn={short_repr(kw['G_attn'])} is not '0' or resolutions "
                              "joined by '_'")
    out = {
        "resolution": integer(kw["resolution"], "resolution", 1, checks.MAX_RESOLUTION),
        "n_classes": integer(kw["n_classes"], "n_classes", 1, checks.MAX_CLASSES),
        "G_ch": integer(kw["G_ch"], "G_ch", 1, checks.MAX_CHANNELS // 16),
        "dim_z": integer(kw["dim_z"], "dim_z", 1, checks.MAX_CHANNELS),
        "shared_dim": integer(kw["shared_dim"], "shared_dim", 0, checks.MAX_CHANNELS),
        "hier": checks.boolean(kw["hier"], "hier"),
        "G_shared": checks.boolean(kw["G_shared"], "G_shared"),
        "G_attn": str(kw["G_attn"]),
        "norm_style": checks.choice(kw["norm_style"], "norm_style", ("bn", "in", "nonorm")),
        "num_G_SVs": integer(kw["num_G_SVs"], "num_G_SVs", 1, 16),
        "num_G_SV_itrs": integer(kw["num_G_SV_itrs"], "num_G_SV_itrs", 0, 100),
        "bottom_width": integer(kw["bottom_width"], "bottom_width", 1, 64),
        "G_kernel_size": integer(kw["G_kernel_size"], "G_kernel_size", 1, 15),
        "BN_eps": number(kw["BN_eps"], "BN_eps", 0.0, 1.0, positive=True),
        "SN_eps": number(kw["SN_eps"], "SN_eps", 0.0, 1.0, positive=True),
        "G_param": checks.choice(kw["G_param"], "G_param", ("SN", "ortho", "none")),
    }
    if out["resolution"] not in _ARCH_MULTIPLIERS:
        raise ConversionError(f"resolution={out['resolution']} is not one of the official "
                              f"{sorted(_ARCH_MULTIPLIERS)}")
    _attn_set(out["G_attn"], [out["resolution"]])  # refuses a G_attn that does not parse
    if "precision" in kw:
        precision = kw["precision"]
        if precision is not None:
            checks.choice(precision, "precision", ("default", "high", "highest"))
        out["precision"] = precision
    return out


def _target(key, expected):
    """Flax (collection, path) for a torch key, or None for a key to drop."""
    parts = key.split(".")
    if parts[0] == "blocks" and len(parts) > 3:
        head, rest = f"blocks_{parts[1]}_{parts[2]}", parts[3:]
    elif parts[0] == "output_layer" and len(parts) > 2:
        head, rest = f"output_layer_{parts[1]}", parts[2:]
    else:
        head, rest = parts[0], parts[1:]
    mods, leaf = (head, *rest[:-1]), rest[-1] if rest else ""
    if re.fullmatch(r"sv\d+", leaf):
        return None
    if re.fullmatch(r"u\d+", leaf):
        return "spectral_norm", mods + ("u",)
    if leaf in ("stored_mean", "stored_var"):
        return "batch_stats", mods + (leaf[len("stored_"):],)
    if leaf == "weight":
        if mods + ("embedding",) in expected["params"]:
            return "params", mods + ("embedding",)
        return "params", mods + ("kernel",)
    return "params", mods + (leaf,)


def _to_flax(leaf, value):
    """Re-layout one torch tensor for its Flax leaf."""
    if leaf == "kernel":
        return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    return value


def convert_state_dict(sd, kwargs_json=None, **kwargs):
    """(module, variables) from an already-read state_dict of numpy arrays."""
    sd = {k[len("module."):] if k.startswith("module.") else k: np.asarray(v)
          for k, v in sd.items()}
    given = _read_kwargs(kwargs_json, kwargs)
    kw = _check_kwargs(given, infer_kwargs(sd))
    module = BigGAN(**kw)
    module = module.clone(dim_z=module.latent_dim)  # store the truncated size, as official
    shapes = _variable_shapes(module)
    expected = {c: flax.traverse_util.flatten_dict(t) for c, t in shapes.items()}
    got = {c: {} for c in expected}
    for key in sd:
        tgt = _target(key, expected)
        if tgt is None:
            continue
        coll, path = tgt
        if coll not in expected or path not in expected[coll]:
            raise ConversionError(f"unexpected checkpoint key {key} (shape {sd[key].shape}) for "
                                  f"BigGAN {_describe(kw)}")
        if coll == "spectral_norm":
            us = sorted((k for k in sd if k.startswith(key[:key.rfind(".")] + ".u")
                         and re.fullmatch(r"u\d+", k.rsplit(".", 1)[1])),
                        key=lambda k: int(k.rsplit(".u", 1)[1]))
            value = np.concatenate([sd[k].reshape(1, -1) for k in us], axis=0)
            if not np.all(np.any(value != 0, axis=1)):  # sigma would be 0: w / 0
                raise ConversionError(f"checkpoint key {key}: a spectral-norm u vector is zero")
        else:
            value = _to_flax(path[-1], sd[key])
        want = tuple(expected[coll][path].shape)
        if tuple(value.shape) != want:
            raise ConversionError(
                f"checkpoint key {key} has shape {tuple(sd[key].shape)}, but BigGAN "
                f"{_describe(kw)} expects {'/'.join(path)} of shape {want} (after re-layout)")
        got[coll][path] = value.astype(np.float32)
    for coll, leaves in expected.items():
        missing = sorted("/".join(p) for p in leaves if p not in got[coll])
        if missing:
            raise ConversionError(f"checkpoint lacks {len(missing)} {coll} entries for BigGAN "
                                  f"{_describe(kw)}, e.g. {missing[:3]}")
    variables = {c: flax.traverse_util.unflatten_dict(t) for c, t in got.items() if t}
    return module, checks.finite(variables, "G")


def _describe(kw):
    return (f"(resolution={kw['resolution']}, G_ch={kw['G_ch']}, G_attn={kw['G_attn']!r}, "
            f"hier={kw['hier']}, G_shared={kw['G_shared']})")


def convert(path, kwargs_json=None, **generator_kwargs):
    """(module, variables) for an official G_ema.pth / G.pth; kwargs as the official Generator."""
    sd = torch_pickle.load(path)
    if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        raise ConversionError(f"{path}: expected a state_dict (tensors by name), found "
                              f"{type(sd).__name__}")
    other = next((k for k, v in sd.items() if not isinstance(v, np.ndarray)), None)
    if other is not None:  # e.g. a training checkpoint of another GAN: {"g": {...}, ...}
        raise ConversionError(f"{path}: not a BigGAN Generator state_dict: entry {other!r} is "
                              f"a {type(sd[other]).__name__}, not a tensor; first keys: "
                              f"{list(sd)[:5]}")
    try:
        return convert_state_dict(sd, kwargs_json=kwargs_json, **generator_kwargs)
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None
    except (TypeError, KeyError, AttributeError, IndexError, OverflowError,
            ZeroDivisionError) as e:  # odd tensors or settings: one line
        raise ConversionError(f"{path}: not laid out as an official BigGAN generator "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


def module_kwargs(module):
    """The JSON-able constructor settings of a BigGAN module."""
    return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
            if f.name not in ("parent", "name")}


def _variable_shapes(module):
    """ShapeDtypeStructs of `module`'s variables (traced, nothing allocated)."""
    return jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((2, module.latent_dim)),
                          jnp.zeros((2,), jnp.int32))


def load_converted(directory):
    """(module, variables) from a directory written by this converter's CLI; its meta.json
    settings are checked as a checkpoint's, its variables against them."""
    module, variables, _ = checks.load_converted(
        directory, "biggan", lambda kw: BigGAN(**check_fields(kw)), _variable_shapes)
    return module, variables


def _parse_value(text):
    """CLI values: JSON literals when they parse (16, true, 1e-6), else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv=None):
    """CLI entry point; returns the exit status (2 after a one-line error on stderr)."""
    parser = cli.ArgumentParser(
        prog="python -m converters.biggan",
        description="Convert an official BigGAN-PyTorch G_ema.pth / G.pth to Flax variables. "
                    "Extra --NAME=VALUE options are official Generator keywords.")
    parser.add_argument("checkpoint")
    parser.add_argument("out_dir")
    parser.add_argument("--kwargs_json", default=None,
                        help="JSON file of Generator kwargs (or {'G_kwargs': {...}})")
    cli.add_overwrite_flag(parser)
    args, extra = parser.parse_known_args(argv)
    kwargs = {}
    for item in extra:
        if not item.startswith("--") or "=" not in item:
            parser.error(f"unrecognised argument {item!r} (use --NAME=VALUE)")
        name, value = item[2:].split("=", 1)
        kwargs[name] = _parse_value(value)

    def write(staged):
        module, variables = convert(args.checkpoint, kwargs_json=args.kwargs_json, **kwargs)
        meta = {"kind": "biggan", "module_kwargs": module_kwargs(module),
                "source": os.path.abspath(args.checkpoint)}
        variables_io.save_variables(staged, variables, meta)
        return f"wrote {args.out_dir} (BigGAN {_describe(meta['module_kwargs'])})"

    return cli.run(write, args.out_dir, args.overwrite)


if __name__ == "__main__":
    sys.exit(main())
