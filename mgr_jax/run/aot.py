"""Compile a config's training steps for accelerators that are not here, and report them.

    python -m mgr_jax.aot --config=configs/cars.py --targets=v5e,h100 \
        --steps=base,pcr,mgr_exact,mgr_fd --dtypes=float32,bfloat16 [--max_batch]

XLA compiles for a TPU topology or a described GPU without the device (JAX's
`experimental.topologies`), so a config can be checked on a laptop before hardware is rented.
For every target, dtype and step it prints whether the step compiled (or the compiler's error
in one line), the memory per device (arguments, outputs, temporaries; donated state counted
once) against the device's, the FLOPs, bytes accessed and the TPU cost model's time (XLA gives
no cost analysis for GPU programs), and with `--max_batch` the largest batch that fits.

The steps are built as `train.setup` builds them (the same `run.build.build`, the state
replicated and the batches split over a "data" mesh axis of the target's devices, the state
donated) at the config's shapes; only the dataset is not read (`--num_classes`, else the
dataset's class count) and the generator can be random weights of a StyleGAN2-ADA of chosen
size (`--generator=stylegan2:256`), as the paper's own is not shipped. Nothing is written
unless `--out` names a JSON file for the rows.

Targets: TPU `v5e`, `v5p`, `v6e` (one chip) or a topology (`v5e:2x2`, `v5p:2x2x1`), which
need `pip install "jax[tpu]"`; GPUs `h100`, `a100`, `a100-40gb` (descriptions in
`aot_targets.GPU_SPECS`) or `gpu:FILE` (an XLA GPU target-config text proto), which need
the CUDA plugin without the CUDA libraries: `pip install jax-cuda12-plugin==<jax version>`. Both are
optional extras, never requirements. The command runs on the host's CPU whatever is installed.
"""
import dataclasses
import importlib
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from mgr_jax import classifier, files
from mgr_jax.errors import UserError
from mgr_jax.generators import load_generator, stylegan2_ada
from mgr_jax.models import stylegan2
from mgr_jax.run import build, config_lib, main as main_lib
from mgr_jax.run.aot_targets import target

STEPS = {  # step name -> (config.method, overrides)
    "base": ("base", {}),
    "gda": ("gda", {}),
    "gda_mh": ("gda_mh", {}),
    "gda_ssl": ("gda_ssl", {}),
    "gda_mps": ("gda_mps", {}),
    "pcr": ("pcr", {}),
    "mgr": ("mgr", {}),
    "mgr_exact": ("mgr", {"mps.hypergradient": "exact"}),
    "mgr_fd": ("mgr", {"mps.hypergradient": "finite_difference"}),
}
def num_classes_of(config):
    """The class count of the config's dataset (its builder's NUM_CLASSES; digits: 10)."""
    name = config.data.name
    if name == "digits":
        return 10
    try:
        module = importlib.import_module(f"mgr_jax.data.datasets.{name}")
    except ImportError:
        module = None
    for obj in vars(module).values() if module else ():
        if isinstance(obj, type) and getattr(obj, "DATASET", None) == name:
            return int(obj.NUM_CLASSES)
    raise UserError(f"the class count of data.name={name!r} is not known without its data; "
                    "give --num_classes")


def random_stylegan2(spec, num_classes, dtype):
    """A conditional StyleGAN2-ADA with random weights: spec "stylegan2:RES[:CBASE:CMAX]"
    (z and w 512, 8 mapping layers; channel_base 16384 and channel_max 512 by default, the
    official configuration at 256x256)."""
    parts = spec.split(":")[1:]
    try:
        res, base, cmax = ([int(p) for p in parts] + [16384, 512])[:3] if len(parts) in (1, 3) \
            else (None, None, None)
    except ValueError:
        res = None
    if not res or res < 4 or res & (res - 1):
        raise UserError(f"--generator={spec!r} must be stylegan2:RES or stylegan2:RES:CBASE:CMAX "
                        "with RES a power of two >= 4")
    module = stylegan2.Generator(z_dim=512, c_dim=num_classes, w_dim=512, img_resolution=res,
                                 img_channels=3, mapping_layers=8, channel_base=base,
                                 channel_max=cmax, conv_clamp=256.0, dtype=dtype)
    return stylegan2_ada.from_module(module, stylegan2.random_variables(module, 0))


def step_config(config, step, dtype, batch_size=None):
    """A copy of `config` for one of STEPS at a compute dtype (and batch size: the synthetic
    batch scaled with it)."""
    method, overrides = STEPS[step]
    config = config.copy_and_resolve_references()
    config.method = method
    config.model.dtype = dtype
    if batch_size is not None:
        ratio = config.synthetic_batch_size / config.batch_size
        config.batch_size = batch_size
        config.synthetic_batch_size = max(1, round(batch_size * ratio))
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def abstract_step(config, generator, num_classes, devices):
    """(jitted step, abstract args) as the trainer runs them on a mesh of `devices`: the
    state and generator replicated, the batch split over "data", the state donated. For
    mps.update_every > 1 the meta step (the other step is a PCR step)."""
    mesh = Mesh(np.asarray(devices), ("data",))
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    model = build.create_model(config, num_classes)
    lr_fn = build.create_learning_rate_fn(config, steps_per_epoch=100)
    tx = build.create_optimizer(config, lr_fn)
    method = build.build(config, model=model, tx=tx, learning_rate_fn=lr_fn,
                         num_classes=num_classes, image_size=config.data.image_size,
                         generator=generator, data_sharding=split)
    size = config.data.image_size

    def init(key):
        init_key, meta_key = jax.random.split(key)
        return classifier.create_train_state(init_key, model, tx, size,
                                             meta=method.init_meta(meta_key))

    key = jax.random.key(0)
    def like(x, sharding=replicated):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    state = jax.tree.map(like, jax.eval_shape(init, key))
    frozen = jax.tree.map(like, method.frozen)
    b = config.batch_size
    batch = {"image": jax.ShapeDtypeStruct((b, size, size, 3), jnp.float32, sharding=split),
             "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=split)}
    if method.needs_val:
        batch["val_image"], batch["val_label"] = batch["image"], batch["label"]
    rng = like(key)
    step = jax.jit(method.train_step, donate_argnums=(0,),
                   out_shardings=(replicated, replicated))
    return step, (state, batch, rng, frozen)


@dataclasses.dataclass
class Report:
    target: str
    dtype: str
    step: str
    batch_size: int
    error: str = ""
    argument_bytes: int = 0
    output_bytes: int = 0
    alias_bytes: int = 0
    temp_bytes: int = 0
    device_bytes: int = 0
    flops: float = math.nan
    bytes_accessed: float = math.nan
    optimal_seconds: float = math.nan
    compile_seconds: float = math.nan
    max_batch: int = 0

    @property
    def peak_bytes(self):
        """Arguments, outputs not aliased to donated arguments, and temporaries."""
        return config_lib.peak_bytes(self.argument_bytes, self.output_bytes, self.alias_bytes,
                                     self.temp_bytes)

    @property
    def fits(self):
        return not self.error and self.peak_bytes <= self.device_bytes


def compile_step(config, step, dtype, target_, generator, num_classes, batch_size=None):
    """A Report of one step compiled for a target (the compiler's error kept, not raised)."""
    cfg = step_config(config, step, dtype, batch_size)
    report = Report(target_.name, dtype, step, cfg.batch_size,
                    device_bytes=target_.memory_bytes)
    n = len(target_.devices)
    if cfg.batch_size % n or cfg.synthetic_batch_size % n:
        report.error = f"batch sizes must be divisible by the {n} devices"
        return report
    jitted, args = abstract_step(cfg, generator, num_classes, target_.devices)
    start = time.perf_counter()
    try:
        compiled = jitted.lower(*args).compile()
    except Exception as e:  # the compiler's refusal is the answer here
        first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        report.error = f"{type(e).__name__}: {first[:400]}"
        return report
    report.compile_seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    report.argument_bytes = int(memory.argument_size_in_bytes)
    report.output_bytes = int(memory.output_size_in_bytes)
    report.alias_bytes = int(memory.alias_size_in_bytes)
    report.temp_bytes = int(memory.temp_size_in_bytes)
    cost = compiled.cost_analysis()
    cost = (cost[0] if cost else None) if isinstance(cost, (list, tuple)) else cost
    if cost:
        report.flops = float(cost.get("flops", math.nan))
        report.bytes_accessed = float(cost.get("bytes accessed", math.nan))
        seconds = float(cost.get("optimal_seconds", math.nan))
        report.optimal_seconds = seconds if seconds >= 0 else math.nan  # < 0: no estimate
    return report


def largest_batch(config, step, dtype, target_, generator, num_classes, first):
    """The largest batch (a multiple of the device count) whose step fits: memory is affine
    in the batch, so two compiles give the line, and compiles at its prediction confirm."""
    n = len(target_.devices)
    half = max(n, (first.batch_size // 2) // n * n)
    if half == first.batch_size:
        half = first.batch_size * 2
    second = compile_step(config, step, dtype, target_, generator, num_classes, half)
    if second.error and not first.error:
        return 0
    per_image = (second.peak_bytes - first.peak_bytes) / (half - first.batch_size)
    if per_image <= 0:
        return 0
    fixed = first.peak_bytes - per_image * first.batch_size
    guess = int((target_.memory_bytes - fixed) / per_image) // n * n
    for _ in range(4):
        if guess < n:
            return 0
        trial = compile_step(config, step, dtype, target_, generator, num_classes, guess)
        if trial.fits:
            return guess
        guess = int(guess * 0.9) // n * n
    return 0


def _gib(x):
    return f"{x / 2**30:.2f}"


def format_row(r):
    if r.error:
        return f"{r.target:10s} {r.dtype:8s} {r.step:9s} {r.batch_size:5d}  FAILED  {r.error}"
    cost = " ".join(f"{'-' if math.isnan(v) else format(v * scale, fmt):>{width}s}"
                    for v, scale, fmt, width in ((r.flops, 1e-12, ".2f", 7),
                                                 (r.bytes_accessed, 1e-9, ".1f", 8),
                                                 (r.optimal_seconds, 1e3, ".1f", 9)))
    fit = "fits" if r.fits else "TOO BIG"
    most = f" {r.max_batch:5d}" if r.max_batch else ""
    return (f"{r.target:10s} {r.dtype:8s} {r.step:9s} {r.batch_size:5d} "
            f"{_gib(r.argument_bytes):>6s} {_gib(r.output_bytes - r.alias_bytes):>6s} "
            f"{_gib(r.temp_bytes):>6s} {_gib(r.peak_bytes):>6s}/{_gib(r.device_bytes):<6s} "
            f"{fit:7s} {cost} {r.compile_seconds:6.0f}{most}")


HEADER = ("target     dtype    step      batch   args    out   temp  peak/device GiB   "
          "TFLOP  GB moved  TPU ms   compile s  max batch")


def run(config, targets, steps, dtypes, generator_spec="config", num_classes=None,
        max_batch=False, out=print, on_report=None):
    """Compile every (target, dtype, step) and print a row each; returns the Reports.
    `on_report(reports so far)` is called after each (e.g. to save them as they come)."""
    config_lib.validate(config, paths=False)
    for step in steps:
        if step not in STEPS:
            raise UserError(f"unknown step {step!r}; choose from {list(STEPS)}")
    for dtype in dtypes:
        if dtype not in ("float32", "bfloat16"):
            raise UserError(f"unknown dtype {dtype!r}; choose float32 or bfloat16")
    resolved = [target(t) for t in targets]  # every name checked before the long work
    num_classes = num_classes or num_classes_of(config)
    generators = {}

    def generator_for(dtype):
        if generator_spec == "config":
            if "config" not in generators:
                generators["config"] = load_generator(config.generator, num_classes)
            return generators["config"]
        if not generator_spec.startswith("stylegan2:"):
            raise UserError(f"--generator={generator_spec!r} must be 'config' or "
                            "stylegan2:RES[:CBASE:CMAX]")
        if dtype not in generators:
            generators[dtype] = random_stylegan2(generator_spec, num_classes, jnp.dtype(dtype))
        return generators[dtype]

    needs_generator = any(STEPS[s][0] != "base" for s in steps)
    reports = []
    out(HEADER)
    for t in resolved:
        for dtype in dtypes:
            generator = generator_for(dtype) if needs_generator else None
            for step in steps:
                report = compile_step(config, step, dtype, t, generator, num_classes)
                if max_batch and not report.error:
                    report.max_batch = largest_batch(config, step, dtype, t, generator,
                                                     num_classes, report)
                reports.append(report)
                out(format_row(report))
                if on_report is not None:
                    on_report(reports)
    return reports


def _flags(argv):
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "Path of a get_config() file "
                                    "(--config.x.y=value overrides a field).",
                                    flag_values=fv, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("targets", "v5e,h100", "Comma-separated targets (module docstring).",
                        flag_values=fv)
    flags.DEFINE_string("steps", "base,pcr,mgr_exact,mgr_fd", f"Some of {list(STEPS)}.",
                        flag_values=fv)
    flags.DEFINE_string("dtypes", "float32", "float32 and/or bfloat16 (compute dtype).",
                        flag_values=fv)
    flags.DEFINE_string("generator", "config", "'config' (the config's generator) or "
                        "stylegan2:RES[:CBASE:CMAX] (random weights).", flag_values=fv)
    flags.DEFINE_integer("num_classes", 0, "Class count (default: the dataset's).",
                         flag_values=fv)
    flags.DEFINE_bool("max_batch", False, "Also find the largest batch that fits (3 to 6 "
                      "more compiles per step).", flag_values=fv)
    flags.DEFINE_string("out", "", "A new JSON file for the rows.", flag_values=fv)
    flags.mark_flags_as_required(["config"], flag_values=fv)
    return fv


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)
    logging.set_verbosity(logging.ERROR)
    jax.config.update("jax_platforms", "cpu")  # the host compiles; no accelerator is needed
    fv = _flags(argv)
    try:
        main_lib.parse(argv, fv)
        if fv.out and os.path.lexists(fv.out):
            raise UserError(f"--out={fv.out} exists; give a new file name")

        def save(reports):  # after every row: a long run stopped midway keeps what it made
            files.write_json(fv.out, [dict(dataclasses.asdict(r), peak_bytes=r.peak_bytes,
                                           fits=r.fits) for r in reports])

        run(fv.config, fv.targets.split(","), fv.steps.split(","), fv.dtypes.split(","),
            fv.generator, fv.num_classes, fv.max_batch,
            out=lambda line: print(line, flush=True), on_report=save if fv.out else None)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def cli():
    """The `mgr-jax-aot` console script: `python -m mgr_jax.aot`'s command line."""
    sys.exit(main())
