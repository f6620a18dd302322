"""Convert torchvision ResNet weights (`.pth` state_dict) to the Flax ResNet of mgr_jax.

The file is read by `converters.torch_pickle` (allow-listed unpickling: no code in it runs).
The architecture is inferred from the keys and shapes: Bottleneck when `layer1.0.conv3` exists,
block counts from the `layerI.J` indices (resnet18/34/50/101/152), the number of classes from
`fc.weight`, the width from `conv1`'s output channels (64 = width 1) and a CIFAR stem (3x3/1
conv, no max-pool) from a 3x3 `conv1`. A `module.` prefix (DataParallel) is dropped, and a
checkpoint dict holding the weights under `state_dict` / `model` / `model_state_dict` is opened.

Names map one to one: torch `layer2.0.downsample.1.running_var` is
`variables["batch_stats"]["layer2_0"]["downsample_1"]["var"]`; conv weights OIHW become `kernel`
HWIO, `fc.weight` (out, in) becomes the Dense `kernel` (in, out), BatchNorm weight/bias/
running_mean/running_var become scale/bias/mean/var, and `num_batches_tracked` is ignored (the
PyTorch BatchNorm momentum is a fixed 0.1).

    module, variables = convert("resnet18-f37072fd.pth")             # Python
    python -m converters.torchvision_resnet IN.pth OUT_DIR [--num_classes N]   # shell

`num_classes` other than the file's keeps every weight but `fc`, which is initialised afresh
with the module's own initialisers from `jax.random.PRNGKey(fc_seed)` (fc_seed=0 by default),
and one line is logged saying so.
"""
import logging
import os
import re
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from converters import checks, cli, torch_pickle
from mgr_jax.models import resnet
from mgr_jax.variables_io import save_variables

_LOG = logging.getLogger(__name__)

# (block, stage sizes) -> torchvision name.
_KNOWN = {("BasicBlock", (2, 2, 2, 2)): "resnet18", ("BasicBlock", (3, 4, 6, 3)): "resnet34",
          ("Bottleneck", (3, 4, 6, 3)): "resnet50", ("Bottleneck", (3, 4, 23, 3)): "resnet101",
          ("Bottleneck", (3, 8, 36, 3)): "resnet152"}
_BLOCKS = {"BasicBlock": resnet.BasicBlock, "Bottleneck": resnet.Bottleneck}
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")


# ---------------------------------------------------------------------------------------------
# Architecture from a state_dict


def unwrap_state_dict(obj):
    """A loaded checkpoint -> {torch key: array}: opens wrapper dicts, drops `module.`."""
    if isinstance(obj, dict) and "fc.weight" not in obj and "module.fc.weight" not in obj:
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                return unwrap_state_dict(obj[key])
    if not isinstance(obj, dict):
        raise ValueError(f"expected a state_dict (dict of tensors), found {type(obj).__name__}")
    keys = list(obj)
    if keys and all(isinstance(k, str) and k.startswith("module.") for k in keys):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    bad = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise ValueError(f"not a state_dict of tensors: {', '.join(map(str, bad[:4]))} "
                         f"{'are' if len(bad) > 1 else 'is'} not tensors")
    return dict(obj)


def infer_config(state_dict):
    """{torch key: array} -> dict(arch, block, stage_sizes, num_classes, width, cifar_stem)."""
    for key in ("conv1.weight", "fc.weight", "layer1.0.conv1.weight"):
        if key not in state_dict:
            raise ValueError(f"not a torchvision ResNet state_dict: no {key} among "
                             f"{len(state_dict)} keys (first: {', '.join(list(state_dict)[:3])})")
    conv1, fc = state_dict["conv1.weight"], state_dict["fc.weight"]
    if conv1.ndim != 4 or conv1.shape[2:] not in ((7, 7), (3, 3)) or fc.ndim != 2:
        raise ValueError(f"unexpected stem/head: conv1.weight {conv1.shape}, fc.weight {fc.shape}"
                         " (a torchvision ResNet has a 7x7 or 3x3 conv1 and a 2-d fc.weight)")
    block = "Bottleneck" if "layer1.0.conv3.weight" in state_dict else "BasicBlock"
    stages = []
    for i in range(1, 5):
        idx = {int(m.group(1)) for k in state_dict
               for m in [re.match(rf"layer{i}\.(\d+)\.", k)] if m}
        if not idx or idx != set(range(max(idx) + 1)):
            raise ValueError(f"layer{i} blocks are {sorted(idx) or 'absent'}: not a torchvision "
                             "ResNet with 4 stages")
        stages.append(max(idx) + 1)
    stages = tuple(stages)
    arch = _KNOWN.get((block, stages))
    if arch is None:
        raise ValueError(f"{block} with stage sizes {stages} is not a torchvision ResNet "
                         f"(known: {', '.join(sorted(_KNOWN.values()))})")
    return {"arch": arch, "block": block, "stage_sizes": stages, "num_classes": int(fc.shape[0]),
            "width": conv1.shape[0] / 64.0, "cifar_stem": conv1.shape[2] == 3}


def torchvision_shapes(arch, num_classes=1000, width=1.0, cifar_stem=False):
    """{torch key: shape} of torchvision's state_dict for `arch`, in torchvision's order.

    Built from torchvision's construction rules, not from the Flax module, so tests can check
    one against the other; also for benchmarks and synthetic files.
    """
    block, stages = next(k for k, v in _KNOWN.items() if v == arch)
    expansion = 4 if block == "Bottleneck" else 1
    base = max(1, int(round(64 * width)))
    shapes = {"conv1.weight": (base, 3, 3, 3) if cifar_stem else (base, 3, 7, 7)}

    def bn(prefix, channels):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{leaf}"] = (channels,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", base)
    inplanes = base
    for i, blocks in enumerate(stages):
        planes = base * 2 ** i
        for j in range(blocks):
            p = f"layer{i + 1}.{j}"
            if block == "BasicBlock":
                convs = [(planes, inplanes, 3, 3), (planes, planes, 3, 3)]
            else:
                convs = [(planes, inplanes, 1, 1), (planes, planes, 3, 3),
                         (planes * 4, planes, 1, 1)]
            for n, shape in enumerate(convs, 1):
                shapes[f"{p}.conv{n}.weight"] = shape
                bn(f"{p}.bn{n}", shape[0])
            if (i > 0 and j == 0) or inplanes != planes * expansion:
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    shapes["fc.weight"] = (int(num_classes), inplanes)
    shapes["fc.bias"] = (int(num_classes),)
    return shapes


def build_module(arch, num_classes, width=1.0, cifar_stem=False, dtype=jnp.float32):
    """The Flax ResNet for a torchvision arch name (see mgr_jax.models.resnet.create_model)."""
    return resnet.create_model(arch, num_classes=int(num_classes), width=float(width),
                               cifar_stem=bool(cifar_stem), dtype=dtype)


def module_from_meta(meta, dtype=jnp.float32):
    """The module described by a converted directory's meta.json (from load_variables)."""
    return build_module(meta["arch"], meta["num_classes"], meta["width"], meta["cifar_stem"],
                        dtype)


def _describe_module(module):
    return (f"ResNet({module.block.__name__}, stages {tuple(module.stage_sizes)}, "
            f"num_classes {module.num_classes}, width {module.width}, "
            f"cifar_stem {module.cifar_stem})")


# ---------------------------------------------------------------------------------------------
# Key and layout mapping


def _torch_key(collection, path):
    """Flax ("params", ("layer2_0", "downsample_0", "kernel")) -> torch key."""
    mods = [re.sub(r"_(\d+)$", r".\1", p) for p in path[:-1]]
    leaf = {("params", "kernel"): "weight", ("params", "scale"): "weight",
            ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
            ("batch_stats", "var"): "running_var"}[collection, path[-1]]
    return ".".join(mods + [leaf])


def _to_flax(array, ndim):
    """torch layout -> Flax layout: conv OIHW -> HWIO, linear (out, in) -> (in, out)."""
    if ndim == 4:
        return np.transpose(array, (2, 3, 1, 0))
    if ndim == 2:
        return np.transpose(array)
    return array


def _torch_shape(shape):
    """Flax leaf shape -> the torch tensor shape it comes from."""
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def _expected(module):
    """Abstract variables of `module` ({collection: nested dict of ShapeDtypeStruct})."""
    x = jnp.zeros((1, 32, 32, 3), jnp.float32)  # parameter shapes do not depend on the size
    return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x, train=False))


def _leaves(tree):
    """Nested dict -> [(path tuple, leaf)] in a fixed order."""
    out = []
    for key in sorted(tree):
        value = tree[key]
        if isinstance(value, dict):
            out.extend(((key,) + p, v) for p, v in _leaves(value))
        else:
            out.append(((key,), value))
    return out


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _listing(label, items, limit=6):
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"{label} {len(items)}: {', '.join(items[:limit])}{more}"


def _map_state_dict(module, state_dict, skip=()):
    """-> (variables as numpy, list of problems); torch keys in `skip` are not required."""
    expected = _expected(module)
    variables, missing, shapes, used = {}, [], [], set()
    for collection in ("params", "batch_stats"):
        for path, leaf in _leaves(dict(expected.get(collection, {}))):
            key = _torch_key(collection, path)
            if key in skip:
                used.add(key)
                continue
            if key not in state_dict:
                missing.append(key)
                continue
            used.add(key)
            want = _torch_shape(leaf.shape)
            got = tuple(state_dict[key].shape)
            if got != want:
                shapes.append(f"{key} {got} (model expects {want})")
                continue
            value = _to_flax(np.asarray(state_dict[key], np.float32), len(want))
            _set(variables.setdefault(collection, {}), path, np.ascontiguousarray(value))
    unexpected = [k for k in state_dict if k not in used and not k.endswith("num_batches_tracked")]
    problems = []
    if missing:
        problems.append(_listing("missing keys", missing))
    if unexpected:
        problems.append(_listing("unexpected keys", unexpected))
    if shapes:
        problems.append(_listing("wrong shapes", shapes))
    return variables, problems


def variables_for(module, state_dict):
    """{torch key: array} -> Flax variables for `module`; one ValueError listing every difference.

    The message names the module, what the file looks like (e.g. a Bottleneck resnet50 given to
    a BasicBlock config), and the missing keys, unexpected keys and wrong shapes.
    """
    state_dict = unwrap_state_dict(state_dict)
    variables, problems = _map_state_dict(module, state_dict)
    if problems:
        try:
            cfg = infer_config(state_dict)
            looks = (f"the file looks like {cfg['arch']} ({cfg['block']}, stages "
                     f"{cfg['stage_sizes']}, num_classes {cfg['num_classes']}, width "
                     f"{cfg['width']:g}, cifar_stem {cfg['cifar_stem']})")
        except ValueError as e:
            looks = f"the file is not a recognisable ResNet ({e})"
        raise ValueError(f"state_dict does not fit {_describe_module(module)}: {looks}; "
                         + "; ".join(problems))
    return jax.tree.map(jnp.asarray, variables)


def _fresh_fc(num_classes, in_features, seed):
    """fc initialised as the module's own `fc` is (Flax Dense defaults): {"kernel", "bias"}."""
    dense = nn.Dense(num_classes, dtype=jnp.float32)
    return dense.init(jax.random.PRNGKey(seed), jnp.zeros((1, in_features), jnp.float32))["params"]


def convert_state_dict(state_dict, num_classes=None, fc_seed=0, source="state_dict",
                       dtype=jnp.float32):
    """{torch key: array} -> (module, variables); a new `fc` if num_classes differs."""
    state_dict = unwrap_state_dict(state_dict)
    cfg = infer_config(state_dict)
    classes = cfg["num_classes"] if num_classes is None else int(num_classes)
    module = build_module(cfg["arch"], classes, cfg["width"], cfg["cifar_stem"], dtype)
    if classes == cfg["num_classes"]:
        return module, variables_for(module, state_dict)
    variables, problems = _map_state_dict(module, state_dict, skip=("fc.weight", "fc.bias"))
    if problems:
        raise ValueError(f"state_dict does not fit {_describe_module(module)}: "
                         + "; ".join(problems))
    in_features = state_dict["fc.weight"].shape[1]
    variables["params"]["fc"] = jax.tree.map(np.asarray, _fresh_fc(classes, in_features, fc_seed))
    _LOG.warning("%s: fc has %d classes; re-initialised fc for num_classes=%d "
                 "(Flax Dense init, PRNGKey(%d)), all other weights converted",
                 source, cfg["num_classes"], classes, fc_seed)
    return module, jax.tree.map(jnp.asarray, variables)


def convert(path, num_classes=None, fc_seed=0, dtype=jnp.float32):
    """A torchvision ResNet `.pth` (zip or legacy torch.save) -> (module, variables)."""
    state_dict = torch_pickle.load(path)
    try:
        module, variables = convert_state_dict(state_dict, num_classes, fc_seed=fc_seed,
                                               source=str(path), dtype=dtype)
        return module, checks.finite(variables, "the state_dict")
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def meta_for(module, source):
    """The meta.json written beside converted variables (`kind`, `arch`, ... `source`)."""
    arch = _KNOWN[(module.block.__name__, tuple(module.stage_sizes))]
    return {"kind": "torchvision_resnet", "arch": arch, "num_classes": int(module.num_classes),
            "width": float(module.width), "cifar_stem": bool(module.cifar_stem),
            "source": os.path.abspath(str(source)),
            "module_kwargs": {"num_classes": int(module.num_classes),
                              "width": float(module.width),
                              "cifar_stem": bool(module.cifar_stem)}}


def check_compatible(variables, module, sample_input_shape):
    """Empty string if `variables` fit `module` on inputs (N, H, W, C), else one line why not."""
    try:
        x = jax.ShapeDtypeStruct(tuple(sample_input_shape), jnp.float32)
        expected = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x, train=False),
                                  x)
    except Exception as e:  # noqa: BLE001 - reported as the mismatch, e.g. a bad input shape
        return f"{_describe_module(module)} cannot take inputs of shape " \
               f"{tuple(sample_input_shape)}: {type(e).__name__}: {str(e).splitlines()[0]}"
    want = {"/".join((c,) + p): leaf.shape for c in expected
            for p, leaf in _leaves(dict(expected[c]))}
    got = {"/".join((c,) + p): tuple(np.shape(leaf)) for c in variables
           for p, leaf in _leaves(dict(variables[c]))}
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    shapes = [f"{k} {got[k]} (model expects {tuple(want[k])})" for k in want
              if k in got and got[k] != tuple(want[k])]
    problems = [_listing(label, items) for label, items in
                (("missing", missing), ("unexpected", unexpected), ("wrong shapes", shapes))
                if items]
    if not problems:
        return ""
    return f"variables do not fit {_describe_module(module)}: " + "; ".join(problems)


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv=None):
    """CLI: convert IN.pth into a new OUT_DIR with mgr_jax.variables_io.save_variables; errors
    are one line on stderr with exit status 2 (`converters.cli`)."""
    parser = cli.ArgumentParser(
        prog="python -m converters.torchvision_resnet",
        description="Convert a torchvision ResNet state_dict (.pth) to Flax variables.")
    parser.add_argument("input", help="torchvision ResNet .pth (torch.save of a state_dict)")
    parser.add_argument("out_dir", help="directory to write (meta.json + variables/)")
    parser.add_argument("--num_classes", type=int, default=None,
                        help="new classifier size; re-initialises fc only (default: the file's)")
    parser.add_argument("--fc_seed", type=int, default=0, help="PRNG seed of a new fc")
    cli.add_overwrite_flag(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def write(staged):
        module, variables = convert(args.input, args.num_classes, fc_seed=args.fc_seed)
        meta = meta_for(module, args.input)
        save_variables(staged, variables, meta)
        return (f"wrote {args.out_dir}: {meta['arch']}, {meta['num_classes']} classes, width "
                f"{meta['width']:g}, cifar_stem {meta['cifar_stem']}")

    return cli.run(write, args.out_dir, args.overwrite)


if __name__ == "__main__":
    sys.exit(main())
