"""Convert an official FastGAN-pytorch checkpoint (`all_<iter>.pth`, `<iter>.pth`) to Flax.

    python -m converters.fastgan all_50000.pth OUT_DIR [--raw]

The file is read with the allow-list unpickler (`converters.torch_pickle`): no code in it runs.
A training checkpoint is a dict with `g` (DataParallel state_dict: keys start with `module.`),
`g_ema` (list of the EMA parameter values in netG.parameters() order) and optimiser states. The
EMA generator (default) is `g` with its parameters overwritten, in registration order, by
`g_ema`; BatchNorm statistics and spectral-norm u / v come from `g`. `--raw` / use_ema=False
keeps `g`. A bare generator state_dict is also accepted and used as it is.
The architecture (ngf, nz, nc, im_size) is read from the tensor shapes. The registration order
comes from `mgr_jax.generators.fastgan.parameter_names`, checked against the Flax module.
Name map: `feat_8.5.weight_orig` -> params `feat_8/conv_5/kernel` (OIHW -> HWIO; the
ConvTranspose2d `init.init.0` is (in, out, kh, kw) -> (kh, kw, in, out)), `weight_u/v` ->
spectral_norm `u` / `v` (v re-ordered to the HWIO flattening), BatchNorm `weight/bias` ->
`scale/bias`, `running_mean/var` -> batch_stats `mean/var`, NoiseInjection `weight` as is.
"""
import os
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np

from converters import checks, cli, torch_pickle
from converters.errors import ConversionError
from mgr_jax import variables_io
from mgr_jax.models.fastgan import (
    BLOCK_LAYERS,
    LAYER_BUFFERS,
    LAYER_PARAMS,
    FastGAN,
    flax_layer_path,
    layout,
    parameter_names,
)

# (torch leaf, Flax collection, Flax leaf) for each layer kind; num_batches_tracked is dropped.
_LEAVES = {
    "conv": (("weight_orig", "params", "kernel"), ("weight_u", "spectral_norm", "u"),
             ("weight_v", "spectral_norm", "v")),
    "convT": (("weight_orig", "params", "kernel"), ("weight_u", "spectral_norm", "u"),
              ("weight_v", "spectral_norm", "v")),
    "bn": (("weight", "params", "scale"), ("bias", "params", "bias"),
           ("running_mean", "batch_stats", "mean"), ("running_var", "batch_stats", "var")),
    "noise": (("weight", "params", "weight"),),
}



def _strip(sd):
    return {k[len("module."):] if k.startswith("module.") else k: np.asarray(v)
            for k, v in sd.items()}


def infer_kwargs(sd):
    """FastGAN(ngf, nz, nc, im_size) settings from a generator state_dict's shapes."""
    key = "init.init.0.weight_orig"
    if key not in sd or "to_big.weight_orig" not in sd:
        raise ConversionError("not a FastGAN Generator state_dict (no init.init.0.weight_orig / "
                              f"to_big.weight_orig); first keys: {list(sd)[:5]}")
    nz, ch2 = sd[key].shape[:2]
    if ch2 % 32:
        raise ConversionError(f"{key} has shape {sd[key].shape}: {ch2} channels is not 32 * ngf")
    im_size = 1024 if "feat_1024.1.weight_orig" in sd else (
        512 if "feat_512.1.weight_orig" in sd else 256)
    return {"ngf": ch2 // 32, "nz": int(nz), "nc": int(sd["to_big.weight_orig"].shape[0]),
            "im_size": im_size}


def _relayout(kind, leaf, value):
    """torch tensor -> the Flax leaf's layout."""
    if leaf == "weight_orig":
        return value.transpose(2, 3, 0, 1) if kind == "convT" else value.transpose(2, 3, 1, 0)
    return value  # weight_v is re-ordered by _convert_v, which needs the kernel's shape


def _convert_v(v, kernel_hwio):
    """v in torch's (in, kh, kw) flattening -> the HWIO (kh, kw, in) flattening."""
    kh, kw, cin, _ = kernel_hwio.shape
    if v.size != kh * kw * cin:
        raise ConversionError(f"weight_v has {v.size} entries, expected {kh * kw * cin}")
    return v.reshape(cin, kh, kw).transpose(1, 2, 0).reshape(-1)


def apply_ema(sd, g_ema, im_size):
    """Overwrite the parameters of state_dict `sd` with the `g_ema` list, in registration order."""
    names = parameter_names(im_size)
    if not isinstance(g_ema, (list, tuple)) or len(g_ema) != len(names):
        size = len(g_ema) if isinstance(g_ema, (list, tuple)) else type(g_ema).__name__
        raise ConversionError(f"g_ema should be a list of {len(names)} tensors for im_size "
                              f"{im_size}, found {size}")
    out = dict(sd)
    for i, (name, value) in enumerate(zip(names, g_ema)):
        value = np.asarray(value)
        if name not in sd or sd[name].shape != value.shape:
            raise ConversionError(f"g_ema[{i}] has shape {value.shape} but parameter {name} is "
                                  f"{sd[name].shape if name in sd else 'missing'} in g")
        out[name] = value
    return out


def check_fields(kw):
    """FastGAN settings with every value checked (kind and range; sizes within
    `converters.checks` limits); ConversionError naming the first bad one."""
    if not isinstance(kw, dict):
        raise ConversionError("the FastGAN settings are not a dict")
    unknown = sorted(str(k) for k in kw if k not in ("ngf", "nz", "nc", "im_size", "precision"))
    if unknown:
        raise ConversionError(f"FastGAN settings the module does not take: {unknown[:5]}")
    out = {"ngf": checks.integer(kw.get("ngf", 64), "ngf", 1, checks.MAX_CHANNELS // 16),
           "nz": checks.integer(kw.get("nz", 100), "nz", 1, checks.MAX_CHANNELS),
           "nc": checks.integer(kw.get("nc", 3), "nc", 1, checks.MAX_IMAGE_CHANNELS),
           "im_size": checks.integer(kw.get("im_size", 1024), "im_size", 1,
                                     checks.MAX_RESOLUTION)}
    if out["im_size"] not in (256, 512, 1024):
        raise ConversionError(f"im_size={out['im_size']} is not 256, 512 or 1024")
    if "precision" in kw:
        if kw["precision"] is not None:
            checks.choice(kw["precision"], "precision", ("default", "high", "highest"))
        out["precision"] = kw["precision"]
    return out


def _variable_shapes(module):
    """ShapeDtypeStructs of `module`'s variables (traced, nothing allocated)."""
    return jax.eval_shape(module.init, {"params": jax.random.key(0),
                                        "noise": jax.random.key(1)}, jnp.zeros((1, module.nz)))


def convert_state_dict(sd, g_ema=None):
    """(module, variables) from a generator state_dict (and an optional g_ema list)."""
    if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        raise ConversionError(f"the generator is a {type(sd).__name__}, not a state_dict of "
                              "tensors by name")
    sd = _strip(sd)
    kw = check_fields(infer_kwargs(sd))
    module = FastGAN(**kw)
    if g_ema is not None:
        sd = apply_ema(sd, g_ema, kw["im_size"])
    shapes = _variable_shapes(module)
    expected = {c: flax.traverse_util.flatten_dict(t) for c, t in shapes.items()}
    got = {c: {} for c in expected}
    used = set()
    for block, btype in layout(kw["im_size"]):
        for index, kind in BLOCK_LAYERS[btype]:
            prefix = f"{block}.{index}." if index else f"{block}."
            path = flax_layer_path(block, btype, index)
            for leaf, coll, fleaf in _LEAVES[kind]:
                key = prefix + leaf
                if key not in sd:
                    raise ConversionError(f"checkpoint lacks {key} (FastGAN {kw})")
                target = path + (fleaf,)
                if target not in expected[coll]:
                    raise ConversionError(f"internal: {key} maps to {coll}/{'/'.join(target)}, "
                                          "which the Flax module does not have")
                value = _relayout(kind, leaf, sd[key])
                if leaf == "weight_v":
                    value = _convert_v(value, got["params"][path + ("kernel",)])
                want = tuple(expected[coll][target].shape)
                if tuple(value.shape) != want:
                    raise ConversionError(f"checkpoint key {key} has shape {sd[key].shape}, but "
                                          f"FastGAN {kw} expects {'/'.join(target)} {want}")
                if coll == "spectral_norm" and not np.any(value):  # sigma would be 0: w / 0
                    raise ConversionError(f"checkpoint key {key}: the spectral-norm vector is "
                                          "zero")
                got[coll][target] = value.astype(np.float32)
                used.add(key)
            used.update(prefix + b for b in LAYER_BUFFERS[kind])
            used.update(prefix + p for p in LAYER_PARAMS[kind])
    extra = sorted(set(sd) - used)
    if extra:
        raise ConversionError(f"unexpected checkpoint keys for FastGAN {kw}: {extra[:5]}")
    for coll, leaves in expected.items():
        missing = sorted("/".join(p) for p in leaves if p not in got[coll])
        if missing:  # the layout tables and the module disagree: a bug here, not in the file
            raise ConversionError(f"internal: no checkpoint entry for {coll} {missing[:3]}")
    variables = {c: flax.traverse_util.unflatten_dict(t) for c, t in got.items()}
    return module, checks.finite(variables, "g")


def convert(path, use_ema=True):
    """(module, variables) for an official FastGAN checkpoint; EMA generator unless use_ema=False.

    A bare generator state_dict (no 'g' entry) has no EMA list and is used as it is.

    `module.apply(variables, z, noise=None, noise_mode="random", train=False)` -> (img, img_128).
    """
    ck = torch_pickle.load(path)
    if not isinstance(ck, dict):
        raise ConversionError(f"{path}: expected a dict, found {type(ck).__name__}")
    if "g" in ck and use_ema and "g_ema" not in ck:
        raise ConversionError(f"{path} has no 'g_ema' entry; pass use_ema=False (--raw) for "
                              "the raw generator 'g'")
    try:
        if "g" in ck:
            return convert_state_dict(ck["g"], ck["g_ema"] if use_ema else None)
        return convert_state_dict(ck)  # a bare generator state_dict, used as it is
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None
    except (TypeError, KeyError, AttributeError, IndexError, ValueError, OverflowError,
            ZeroDivisionError) as e:  # odd tensors or settings: one line
        raise ConversionError(f"{path}: not laid out as an official FastGAN checkpoint "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


def module_kwargs(module):
    """The JSON-able constructor settings of a FastGAN module."""
    return {"ngf": module.ngf, "nz": module.nz, "nc": module.nc, "im_size": module.im_size,
            "precision": module.precision}


def load_converted(directory):
    """(module, variables) from a directory written by this converter's CLI; its meta.json
    settings are checked as a checkpoint's, its variables against them."""
    module, variables, _ = checks.load_converted(
        directory, "fastgan", lambda kw: FastGAN(**check_fields(kw)), _variable_shapes)
    return module, variables


def main(argv=None):
    """CLI entry point; returns the exit status (2 after a one-line error on stderr)."""
    parser = cli.ArgumentParser(prog="python -m converters.fastgan",
                                description="Convert an official FastGAN checkpoint "
                                            "(all_<iter>.pth) to Flax variables.")
    parser.add_argument("checkpoint")
    parser.add_argument("out_dir")
    parser.add_argument("--raw", action="store_true",
                        help="convert the raw generator 'g' instead of the EMA one")
    cli.add_overwrite_flag(parser)
    args = parser.parse_args(argv)

    def write(staged):
        module, variables = convert(args.checkpoint, use_ema=not args.raw)
        meta = {"kind": "fastgan", "module_kwargs": module_kwargs(module),
                "source": os.path.abspath(args.checkpoint), "use_ema": not args.raw}
        variables_io.save_variables(staged, variables, meta)
        return (f"wrote {args.out_dir} (FastGAN {module_kwargs(module)}, "
                f"{'EMA' if not args.raw else 'raw'} weights)")

    return cli.run(write, args.out_dir, args.overwrite)


if __name__ == "__main__":
    sys.exit(main())
