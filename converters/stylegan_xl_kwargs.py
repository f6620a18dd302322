"""The StyleGAN-XL generator's settings (`module_kwargs`) as JSON and back: what
converters/stylegan_xl.py saves in meta.json and rebuilds the module from, every field of a
file from a stranger checked for kind and range before a module is built
(docs/threat_model.md)."""
import jax.numpy as jnp

from converters import checks
from converters.errors import ConversionError
from converters.torch_tensors import short_repr
from mgr_jax.models import stylegan_xl

DTYPES = ("float32", "bfloat16", "float16")  # synthesis compute dtypes
_MODULE_FIELDS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "input_spec",
                  "layers", "mapping_layers", "mapping_lr_multiplier", "num_embeddings",
                  "embedding_dim", "output_scale", "dtype")
_OPTIONAL = ("mapping_layers", "mapping_lr_multiplier", "num_embeddings", "embedding_dim",
             "output_scale", "dtype", "down_radial", "conv_clamp")
MAX_SIZE = 4 * checks.MAX_RESOLUTION  # feature-map sizes, padding, sampling rates


def module_kwargs_of(module):
    """The Generator's fields as JSON (specs as dicts), to rebuild it with `build_module`."""
    return {"z_dim": module.z_dim, "c_dim": module.c_dim, "w_dim": module.w_dim,
            "img_resolution": module.img_resolution, "img_channels": module.img_channels,
            "input_spec": module.input_spec._asdict(),
            "layers": [spec._asdict() for spec in module.layers],
            "mapping_layers": module.mapping_layers,
            "mapping_lr_multiplier": module.mapping_lr_multiplier,
            "num_embeddings": module.num_embeddings, "embedding_dim": module.embedding_dim,
            "output_scale": module.output_scale, "dtype": jnp.dtype(module.dtype).name}


def _fields(given, names, where):
    """`given` (a dict) if it has exactly the keys `names` (the optional ones may lack)."""
    if not isinstance(given, dict):
        raise ConversionError(f"{where} is a {type(given).__name__}, not a dict")
    required = [n for n in names if n not in _OPTIONAL]
    unknown = sorted(str(k) for k in given if k not in names)
    missing = [n for n in required if n not in given]
    if unknown or missing:
        raise ConversionError(f"{where}: unknown fields {unknown[:5]}, missing {missing[:5]}")
    return given


def _input_spec(spec):
    """InputSpec from its fields, each checked."""
    _fields(spec, stylegan_xl.InputSpec._fields, "input_spec")
    size = spec["size"]
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise ConversionError(f"input_spec.size={short_repr(size)} is not (width, height)")
    out = stylegan_xl.InputSpec(
        channels=checks.integer(spec["channels"], "input_spec.channels", 1,
                                checks.MAX_CHANNELS),
        size=checks.integers(size, "input_spec.size", 1, MAX_SIZE),
        sampling_rate=checks.number(spec["sampling_rate"], "input_spec.sampling_rate", 0.0,
                                    MAX_SIZE, positive=True),
        bandwidth=checks.number(spec["bandwidth"], "input_spec.bandwidth", 0.0, MAX_SIZE,
                                positive=True))
    if not out.bandwidth < out.sampling_rate / 2:  # the band's damping divides by the gap
        raise ConversionError(f"input_spec.bandwidth={out.bandwidth:g} is not below half the "
                              f"sampling_rate {out.sampling_rate:g}")
    return out


def _layer_spec(layer, i):
    """LayerSpec from its fields, each checked."""
    where = f"layers[{i}]"
    _fields(layer, stylegan_xl.LayerSpec._fields, where)
    name = layer["name"]
    if not isinstance(name, str) or not name.isidentifier():
        raise ConversionError(f"{where}.name={short_repr(name)} is not a layer name")
    padding = layer["padding"]
    if not isinstance(padding, (list, tuple)) or len(padding) != 4:
        raise ConversionError(f"{where}.padding={short_repr(padding)} is not (x0, x1, y0, y1)")
    clamp = layer.get("conv_clamp", 256.0)
    return stylegan_xl.LayerSpec(
        name=name,
        in_channels=checks.integer(layer["in_channels"], f"{where}.in_channels", 1,
                                   checks.MAX_CHANNELS),
        out_channels=checks.integer(layer["out_channels"], f"{where}.out_channels", 1,
                                    checks.MAX_CHANNELS),
        is_torgb=checks.boolean(layer["is_torgb"], f"{where}.is_torgb"),
        conv_kernel=checks.integer(layer["conv_kernel"], f"{where}.conv_kernel", 1, 15),
        up_factor=checks.integer(layer["up_factor"], f"{where}.up_factor", 1, 16),
        down_factor=checks.integer(layer["down_factor"], f"{where}.down_factor", 1, 16),
        padding=checks.integers(padding, f"{where}.padding", -MAX_SIZE, MAX_SIZE),
        up_taps=checks.integer(layer["up_taps"], f"{where}.up_taps", 1, checks.MAX_FILTER_TAPS),
        down_taps=checks.integer(layer["down_taps"], f"{where}.down_taps", 1,
                                 checks.MAX_FILTER_TAPS),
        down_radial=checks.boolean(layer.get("down_radial", False), f"{where}.down_radial"),
        conv_clamp=None if clamp is None else checks.number(
            clamp, f"{where}.conv_clamp", 0.0, 1e6, positive=True))


def build_module(module_kwargs):
    """`stylegan_xl.Generator` from `module_kwargs_of` output (lists back to tuples), every
    field checked (kind and range; sizes within `converters.checks` limits)."""
    kw = _fields(module_kwargs, _MODULE_FIELDS, "module_kwargs")
    layers = kw["layers"]
    if not isinstance(layers, (list, tuple)) or not 0 < len(layers) <= checks.MAX_LAYERS:
        raise ConversionError(f"layers is not a list of 1..{checks.MAX_LAYERS} layer specs")
    layers = tuple(_layer_spec(layer, i) for i, layer in enumerate(layers))
    if len({spec.name for spec in layers}) != len(layers):
        raise ConversionError("two layers have the same name")
    c_dim = checks.integer(kw["c_dim"], "c_dim", 0, checks.MAX_CLASSES)
    return stylegan_xl.Generator(
        z_dim=checks.integer(kw["z_dim"], "z_dim", 1, checks.MAX_CHANNELS), c_dim=c_dim,
        w_dim=checks.integer(kw["w_dim"], "w_dim", 1, checks.MAX_CHANNELS),
        img_resolution=checks.integer(kw["img_resolution"], "img_resolution", 1,
                                      checks.MAX_RESOLUTION),
        img_channels=checks.integer(kw["img_channels"], "img_channels", 1,
                                    checks.MAX_IMAGE_CHANNELS),
        input_spec=_input_spec(kw["input_spec"]), layers=layers,
        mapping_layers=checks.integer(kw.get("mapping_layers", 2), "mapping_layers", 0,
                                      checks.MAX_LAYERS),
        mapping_lr_multiplier=checks.number(kw.get("mapping_lr_multiplier", 0.01),
                                            "mapping_lr_multiplier", 0.0, 1e3, positive=True),
        num_embeddings=checks.integer(kw.get("num_embeddings", 1000), "num_embeddings",
                                      max(c_dim, 1), checks.MAX_CLASSES),
        embedding_dim=checks.integer(kw.get("embedding_dim", 320), "embedding_dim", 1,
                                     checks.MAX_CHANNELS),
        output_scale=checks.number(kw.get("output_scale", 0.25), "output_scale", -1e3, 1e3),
        dtype=jnp.dtype(checks.choice(kw.get("dtype", "float32"), "dtype", DTYPES)))
