"""Generator checkpoints in the original PyTorch formats, written from Flax variables (no torch).

Tests use them to go through the user's path: original file -> converter -> Generator -> run.
Each writer inverts only the file layout (names, tensor layouts, pickled module trees), using
`converters.torch_pickle`'s writer:
  - StyleGAN2-ADA `network-snapshot-*.pkl`: persistent objects, `G_ema` with its init kwargs;
  - BigGAN-PyTorch `G_ema.pth` (torch.save zip) + a JSON of the Generator's keyword settings;
  - FastGAN `all_<iter>.pth`: {"g": DataParallel state_dict, "g_ema": parameter list, opts};
  - EDM `network-snapshot-*.pkl`: persistent objects, `ema`, with torch ModuleDicts inside.
"""
import json
import re

import jax
import numpy as np

from converters import pickle_writer
from mgr_jax.models import edm as edm_net
from mgr_jax.models import fastgan as fastgan_net

_HOOKS = pickle_writer.Reduce(pickle_writer.Global("collections", "OrderedDict"), ())


def flat(tree):
    """{(key, ...): numpy array} of a nested dict of arrays."""
    return {tuple(getattr(k, "key", k) for k in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _parameter(array):
    """A torch.nn.Parameter as torch pickles one."""
    return pickle_writer.Reduce(pickle_writer.Global("torch._utils", "_rebuild_parameter"),
                     (np.asarray(array, np.float32), True, _HOOKS))


def _torch_weight(array):
    """Flax kernel -> torch weight: Dense (in, out) -> (out, in), convolution HWIO -> OIHW."""
    a = np.asarray(array, np.float32)
    if a.ndim == 2:
        return a.T
    if a.ndim == 4:
        return a.transpose(3, 2, 0, 1)
    return a


def _easy_dict(d):
    return pickle_writer.Reduce(pickle_writer.Global("dnnlib.util", "EasyDict"), (dict(d),))


def _module_tree(entries, class_of, extra_state):
    """Pickle stand-in of a torch module tree.

    entries: dotted name -> ("param" | "buffer", torch-layout array), or ("module", None) for a
    module without tensors. class_of(path) is the class name of the module at `path` (a tuple
    of names; () is the root), pickled as a persistent object, or None for a torch ModuleDict
    (NEWOBJ + BUILD). extra_state(path) -> attributes to add to that module's `__dict__`.
    """
    root = {}
    for name, entry in entries.items():
        node = root
        names = name.split(".")
        if entry[0] == "module":
            for key in names:
                node = node.setdefault(key, {})
            continue
        for key in names[:-1]:
            node = node.setdefault(key, {})
        node[names[-1]] = entry

    def build(node, path):
        state = {"training": False, "_parameters": {}, "_buffers": {}, "_modules": {}}
        for key, child in node.items():
            if isinstance(child, tuple):
                kind, value = child
                if kind == "param":
                    state["_parameters"][key] = _parameter(value)
                else:
                    state["_buffers"][key] = value
            else:
                state["_modules"][key] = build(child, path + (key,))
        state.update(extra_state(path))
        class_name = class_of(path)
        if class_name is None:
            return pickle_writer.Instance(pickle_writer.Global("torch.nn.modules.container", "ModuleDict"), state)
        meta = {"type": "class", "version": 4, "class_name": class_name, "state": state,
                "module_src": "raise SystemExit('snapshot source must never run')"}
        return pickle_writer.Reduce(pickle_writer.Global("torch_utils.persistence", "_reconstruct_persistent_obj"),
                         (meta,))

    return build(root, ())


# ---------------------------------------------------------------------------------------------
# StyleGAN2-ADA

_SG2_CLASSES = {"mapping": "MappingNetwork", "synthesis": "SynthesisNetwork",
                "torgb": "ToRGBLayer", "affine": "FullyConnectedLayer"}


def write_stylegan2_ada(path, module, variables):
    """A training snapshot whose `G_ema` is `module` (mgr_jax.models.stylegan2.Generator)."""
    entries = {}
    for col, kind in (("params", "param"), ("buffers", "buffer")):
        for names, value in flat(variables[col]).items():
            if names[-1] == "const":
                value = value.transpose(2, 0, 1)  # HWC -> CHW
            elif names[-1] == "weight":
                value = _torch_weight(value)
            entries[".".join(names)] = (kind, value)

    def class_of(path):
        if not path:
            return "Generator"
        name = path[-1]
        if name.startswith("b") and name[1:].isdigit():
            return "SynthesisBlock"
        if name.startswith("conv"):
            return "SynthesisLayer"
        return _SG2_CLASSES.get(name, "FullyConnectedLayer")

    def extra_state(path):
        if path:
            return {}
        init_kwargs = _easy_dict({
            "z_dim": module.z_dim, "c_dim": module.c_dim, "w_dim": module.w_dim,
            "img_resolution": module.img_resolution, "img_channels": module.img_channels,
            "mapping_kwargs": _easy_dict({"num_layers": module.mapping_layers}),
            "synthesis_kwargs": _easy_dict({
                "channel_base": module.channel_base, "channel_max": module.channel_max,
                "num_fp16_res": 0, "conv_clamp": module.conv_clamp,
                "architecture": module.architecture})})
        return {"_init_args": (), "_init_kwargs": init_kwargs, "num_ws": module.num_ws,
                "z_dim": module.z_dim, "c_dim": module.c_dim}

    snapshot = {"G": None, "D": None,
                "G_ema": _module_tree(entries, class_of, extra_state), "augment_pipe": None,
                "training_set_kwargs": _easy_dict({"resolution": module.img_resolution})}
    with open(path, "wb") as f:
        f.write(pickle_writer.dumps_plain(snapshot))


# ---------------------------------------------------------------------------------------------
# BigGAN

def _biggan_prefix(mods):
    """Flax module path -> torch prefix: ('blocks_1_0', 'bn1', 'gain') -> 'blocks.1.0.bn1.gain.'"""
    out = []
    for m in mods:
        m = re.sub(r"^blocks_(\d+)_(\d+)$", r"blocks.\1.\2", m)
        out.append(re.sub(r"^output_layer_(\d+)$", r"output_layer.\1", m))
    return ".".join(out) + "."


def write_biggan(path, json_path, module, variables):
    """G_ema.pth (state_dict) of `module` (mgr_jax.models.biggan.BigGAN) and, in
    `json_path`, the official Generator keywords the weights cannot show (eps, norm, SVs)."""
    sd = {}
    for col, tree in variables.items():
        for names, value in flat(tree).items():
            prefix, leaf = _biggan_prefix(names[:-1]), names[-1]
            if col == "spectral_norm":  # u (k, out) -> u0 .. u{k-1} (1, out), and sv (logged)
                for i, row in enumerate(value):
                    sd[f"{prefix}u{i}"] = row[None].astype(np.float32)
                    sd[f"{prefix}sv{i}"] = np.ones(1, np.float32)
            elif col == "batch_stats":
                sd[f"{prefix}stored_{leaf}"] = value.astype(np.float32)
            elif leaf == "embedding":
                sd[f"{prefix}weight"] = value.astype(np.float32)
            elif leaf == "kernel":
                sd[f"{prefix}weight"] = _torch_weight(value)
            else:
                sd[f"{prefix}{leaf}"] = value.astype(np.float32)
    pickle_writer.save(path, sd)
    keys = ("resolution", "n_classes", "G_ch", "dim_z", "shared_dim", "hier", "G_shared",
            "G_attn", "norm_style", "num_G_SVs", "num_G_SV_itrs", "BN_eps", "SN_eps")
    with open(json_path, "w") as f:
        json.dump({k: getattr(module, k) for k in keys}, f)


# ---------------------------------------------------------------------------------------------
# FastGAN

def _fastgan_state_dict(module, variables):
    """Generator state_dict (torch names, layouts) of FastGAN `variables`."""
    def get(col, path):
        node = variables[col]
        for key in path:
            node = node[key]
        return np.asarray(node, np.float32)

    sd = {}
    for block, btype in fastgan_net.layout(module.im_size):
        for index, kind in fastgan_net.BLOCK_LAYERS[btype]:
            prefix = f"{block}.{index}." if index else f"{block}."
            layer = fastgan_net.flax_layer_path(block, btype, index)
            if kind in ("conv", "convT"):
                kernel = get("params", layer + ("kernel",))  # HWIO
                kh, kw, cin, _ = kernel.shape
                sd[prefix + "weight_orig"] = (kernel.transpose(2, 3, 0, 1) if kind == "convT"
                                              else kernel.transpose(3, 2, 0, 1))
                sd[prefix + "weight_u"] = get("spectral_norm", layer + ("u",))
                v = get("spectral_norm", layer + ("v",))  # (kh, kw, in) order -> (in, kh, kw)
                sd[prefix + "weight_v"] = v.reshape(kh, kw, cin).transpose(2, 0, 1).reshape(-1)
            elif kind == "bn":
                sd[prefix + "weight"] = get("params", layer + ("scale",))
                sd[prefix + "bias"] = get("params", layer + ("bias",))
                sd[prefix + "running_mean"] = get("batch_stats", layer + ("mean",))
                sd[prefix + "running_var"] = get("batch_stats", layer + ("var",))
                sd[prefix + "num_batches_tracked"] = np.array(1000, np.int64)
            else:  # NoiseInjection
                sd[prefix + "weight"] = get("params", layer + ("weight",))
    return sd


def write_fastgan(path, module, variables, raw_variables):
    """all_<iter>.pth: the raw generator `g` (DataParallel names) from `raw_variables`, and
    `g_ema`, the EMA parameters (from `variables`) as a list in registration order."""
    ema = _fastgan_state_dict(module, variables)
    g = {"module." + k: v for k, v in _fastgan_state_dict(module, raw_variables).items()}
    adam = {"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.5, 0.999), "params": []}]}
    pickle_writer.save(path, {"g": g, "d": {}, "g_ema": [ema[n] for n in fastgan_net.parameter_names(
        module.im_size)], "opt_g": adam, "opt_d": adam})


# ---------------------------------------------------------------------------------------------
# EDM

def _edm_class(path):
    """Class of the module at `path` in EDMPrecond(SongUNet); None for the ModuleDicts."""
    if not path:
        return "EDMPrecond"
    if path == ("model",):
        return "SongUNet"
    name = path[-1]
    if path[1:] in (("enc",), ("dec",)):
        return None
    if name == "map_noise":
        return "PositionalEmbedding"
    if name.startswith(("map_", "affine")):
        return "Linear"
    if name.startswith("norm") or name.endswith("aux_norm"):
        return "GroupNorm"
    if len(path) == 3 and not name.endswith(("_conv", "aux_up", "aux_down", "aux_skip",
                                              "aux_residual")):
        return "UNetBlock"
    return "Conv2d"


def write_edm(path, module, variables):
    """A training snapshot whose `ema` is `module` (mgr_jax.models.edm.EDMPrecond,
    positional embedding) with `variables`."""
    if module.embedding_type != "positional":
        raise NotImplementedError("only the positional (DDPM++) embedding is written here")
    entries = {"model.map_noise": ("module", None)}
    for col, kind in (("params", "param"), ("buffers", "buffer")):
        for names, value in flat(variables.get(col, {})).items():
            mods, leaf = list(names[:-1]), names[-1]
            if len(mods) > 1 and mods[1].startswith(("enc_", "dec_")):
                mods[1:2] = mods[1].split("_", 1)  # enc_8x8_block0 -> enc, 8x8_block0
            if leaf in ("kernel", "scale"):
                leaf, value = "weight", _torch_weight(value)
            entries[".".join(mods + [leaf])] = (kind, value.astype(np.float32))
    settings = edm_net.module_kwargs(module)
    sigmas = {k: float(settings.pop(k)) for k in ("sigma_min", "sigma_max", "sigma_data")}
    block = {"num_heads": 1, "eps": 1e-6, "skip_scale": float(np.sqrt(0.5)),
             "resample_proj": True, "adaptive_scale": False}

    def extra_state(path):
        kind = _edm_class(path)
        if kind == "EDMPrecond":
            return dict(sigmas, _init_args=(), _init_kwargs=_easy_dict(settings))
        if kind == "GroupNorm":
            return {"_init_args": (), "_init_kwargs": {"eps": 1e-6}, "eps": 1e-6}
        if kind == "UNetBlock":
            return {"_init_args": (), "_init_kwargs": dict(block)}
        if kind == "PositionalEmbedding":
            return {"_init_args": (), "_init_kwargs": {
                "num_channels": module.model_channels * module.channel_mult_noise,
                "endpoint": True}}
        return {"_init_args": (), "_init_kwargs": {}} if kind else {}

    snapshot = {"ema": _module_tree(entries, _edm_class, extra_state), "loss_fn": None,
                "augment_pipe": None,
                "dataset_kwargs": _easy_dict({"resolution": module.img_resolution})}
    with open(path, "wb") as f:
        f.write(pickle_writer.dumps_plain(snapshot))
