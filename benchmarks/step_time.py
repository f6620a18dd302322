"""Step time of the jitted train steps: base, PCR, MGR (exact and finite-difference), GDA,
and MGR with mps.update_every=4 / 16 (mgr_k4, mgr_k16).

    python benchmarks/step_time.py [--shapes small,paper] [--batch 64] [--iters 5]
                                   [--methods base,pcr,mgr_exact,mgr_fd] [--torch]
                                   [--generator stylegan2|random] [--out step_time.json]
    python benchmarks/step_time.py --shapes small --methods base,pcr,mgr_exact,mgr_k4,mgr_k16

On a 2-core CPU the paper shape at batch 64 takes far too long; there use e.g.
    python benchmarks/step_time.py --shapes paper --paper-batch 8 --iters 2 --torch
(about 10 minutes: compiles of 10-70 s per method, an MGR step of about 18 s).

Each method's `train_step` (mgr_jax.run.build.build, as training uses it) is jitted with the
state donated, compiled once, then run `--warmup` times untimed and `--iters` times timed;
every step waits for its outputs (block_until_ready) and the table reports the median.
Each ratio is the ratio of the medians; next to it, the range of the per-round ratios shows
how much the machine moved it (on a 2-core CPU at 224x224 batch 64, whose steps hold most
of the memory, single rounds of exact/FD ranged 0.95-1.19 in one run).
All methods run in one process on the same device, compiled first and then timed
interleaved (each round runs one step of every method), so their ratios compare like with
like even when other processes load the machine. An update_every=k variant's round runs one
whole cycle of k steps (the meta step, then k - 1 steps between) and counts its time / k:
the amortised time per step (its FLOPs likewise; its compile time is both programs').

Shapes:
  small  the default config (configs/default.py): 16x16 inputs, ResNet-18 width 0.25 with the
         CIFAR stem, 10 classes, batch 64 real + 64 synthetic (+ 64 D_val for MGR).
  paper  the paper's protocol: ResNet-18 width 1 at 224x224, 196 classes (Cars), batch 64 + 64.
Generator (`--generator`):
  stylegan2 (default) a conditional StyleGAN2-ADA (mgr_jax.models.stylegan2) with random
         weights (speed does not depend on their values): small = 16x16, z/w 64, 2 mapping
         layers, 64 channels (the shared fixture's settings at 16x16); paper = 64x64, z/w 512,
         8 mapping layers, channel_base 8192, channel_max 256 (`--paper-gen-res`,
         `--paper-gen-channels`), its output resized (bilinear) to 224.
  random the tiny conditional generator of `generator.kind=random` (mgr_jax/generators/tiny.py).
  shipped (small shape only) the trained digits generator the default config uses
         (mgr_jax/assets/digits_stylegan2: 64/32/16 channels at 4/8/16).

FLOPs come from XLA (`jit(...).lower(...).compile().cost_analysis()`); the table also gives
each step's FLOPs in "units" of one classifier forward on the real batch (SPEC: base 3,
PCR 9, MPS about 30 plus the generator and the augmentation), and the FLOPs of the pieces
(classifier forward, generator, augmentation T). Achieved FLOP/s = FLOPs / median step time;
MFU is printed where the device's peak is known (table PEAK_TFLOPS, dense: bf16 for
`--dtype bfloat16`, TF32 for float32, which XLA's default precision uses on these GPUs; CPUs
have none, so only FLOP/s is printed there).

`--torch` also runs benchmarks/torch_reference.py (same shapes, batch, generator kind) in a
subprocess after the JAX steps and prints JAX / PyTorch per method.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402  (after the path set-up above)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.shapes import SHAPES  # noqa: E402
from configs import default as default_config  # noqa: E402
from mgr_jax import classifier, synthetic, synthetic_augment  # noqa: E402
from mgr_jax.generators import (
    load_generator,  # noqa: E402
    tiny,  # noqa: E402
)
from mgr_jax.generators import stylegan2_ada as sg_generator  # noqa: E402
from mgr_jax.models import stylegan2  # noqa: E402
from mgr_jax.run import build  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# Benchmark name -> (config.method, config overrides).
VARIANTS = {
    "base": ("base", {}),
    "gda": ("gda", {}),
    "pcr": ("pcr", {}),
    "mgr_exact": ("mgr", {"mps.hypergradient": "exact"}),
    "mgr_fd": ("mgr", {"mps.hypergradient": "finite_difference"}),
    "mgr_k4": ("mgr", {"mps.hypergradient": "exact", "mps.update_every": 4}),
    "mgr_k16": ("mgr", {"mps.hypergradient": "exact", "mps.update_every": 16}),
}


# Dense peak TFLOP/s (no sparsity) by device_kind substring, most specific first.
# "tf32" is what float32 convolutions and matmuls reach at XLA's default precision on these
# GPUs; "fp32" is the non-tensor-core peak.
PEAK_TFLOPS = (
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100 NVL", {"bf16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM
    ("H200", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H800", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("GH200", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("A10G", {"bf16": 70.0, "tf32": 35.0, "fp32": 31.2}),
    ("L40S", {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("V100", {"bf16": 125.0, "tf32": 125.0, "fp32": 15.7}),  # fp16 tensor cores
    ("TPU v4", {"bf16": 275.0, "tf32": 275.0, "fp32": 275.0}),
    ("TPU v5 lite", {"bf16": 197.0, "tf32": 197.0, "fp32": 197.0}),
    ("TPU v5", {"bf16": 459.0, "tf32": 459.0, "fp32": 459.0}),
)


def peak_flops(device, dtype):
    """(peak FLOP/s, label) for the device and compute dtype, or (None, reason)."""
    kind = device.device_kind
    if device.platform == "cpu":
        return None, "cpu: no peak table"
    key = "bf16" if dtype == "bfloat16" else "tf32"
    for name, peaks in PEAK_TFLOPS:
        if name.lower() in kind.lower():
            return peaks[key] * 1e12, f"{name} {key} dense"
    return None, f"unknown device_kind {kind!r}"


def flops_of(compiled):
    """FLOPs XLA counts for a compiled program (cost_analysis is a dict or a list of them)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def make_config(shape, bench_method, args):
    """configs/default.py with the shape's model and the method's settings."""
    spec = SHAPES[shape]
    config = default_config.get_config()
    method, overrides = VARIANTS[bench_method]
    config.method = method
    config.batch_size = args.batch
    config.synthetic_batch_size = args.syn_batch or args.batch
    config.data.image_size = spec["image_size"]
    config.model.width = spec["width"]
    config.model.cifar_stem = spec["cifar_stem"]
    config.model.dtype = args.dtype
    config.generator.kind = "random" if args.generator == "random" else "stylegan2_ada"
    config.generator.latent_dim = spec["z_dim"]
    config.generator.resolution = spec["gen_resolution"]
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def make_generator(shape, args):
    """The benchmark's generator (random weights) behind mgr_jax's Generator interface."""
    spec = SHAPES[shape]
    if args.generator == "shipped":
        return load_generator(default_config.get_config().generator, spec["num_classes"])
    if args.generator == "random":
        return tiny.load(seed=0, latent_dim=spec["z_dim"], num_classes=spec["num_classes"],
                         resolution=spec["gen_resolution"])
    res = spec["gen_resolution"]
    base, cmax = spec["channel_base"], spec["channel_max"]
    if shape == "paper":
        res = args.paper_gen_res or res
        if args.paper_gen_channels:
            base, cmax = (int(v) for v in args.paper_gen_channels.split(","))
    module = stylegan2.Generator(z_dim=spec["z_dim"], c_dim=spec["num_classes"],
                                 w_dim=spec["w_dim"], img_resolution=res, img_channels=3,
                                 mapping_layers=spec["mapping_layers"], channel_base=base,
                                 channel_max=cmax, conv_clamp=256.0, dtype=args.gen_dtype)
    return sg_generator.from_module(module, stylegan2.random_variables(module, 0))


def generator_description(shape, args):
    spec = SHAPES[shape]
    if args.generator == "shipped":
        return ("the shipped digits StyleGAN2-ADA (configs/default.py): 16x16, z/w 64, "
                "2 mapping layers, 64/32/16 channels at 4/8/16")
    if args.generator == "random":
        return (f"tiny random conditional generator {spec['gen_resolution']}x"
                f"{spec['gen_resolution']}, z {spec['z_dim']}")
    res, base, cmax = spec["gen_resolution"], spec["channel_base"], spec["channel_max"]
    if shape == "paper":
        res = args.paper_gen_res or res
        if args.paper_gen_channels:
            base, cmax = (int(v) for v in args.paper_gen_channels.split(","))
    return (f"StyleGAN2-ADA (random weights) {res}x{res}, z/w {spec['z_dim']}, "
            f"{spec['mapping_layers']} mapping layers, channel_base {base}, channel_max {cmax}, "
            f"{spec['num_classes']} classes, {args.gen_dtype}")


def build_method(config, generator, num_classes):
    """(model, method, state) as train.setup builds them, with our generator and no dataset."""
    model = build.create_model(config, num_classes)
    lr_fn = build.create_learning_rate_fn(config, steps_per_epoch=100)
    tx = build.create_optimizer(config, lr_fn)
    method = build.build(config, model=model, tx=tx, learning_rate_fn=lr_fn,
                         num_classes=num_classes, image_size=config.data.image_size,
                         generator=generator)
    init_rng, meta_rng = jax.random.split(jax.random.key(config.seed))
    state = classifier.create_train_state(init_rng, model, tx, config.data.image_size,
                                     meta=method.init_meta(meta_rng))
    return model, method, state


def make_batch(config, num_classes, with_val, seed=0):
    rng = np.random.default_rng(seed)
    b, s = config.batch_size, config.data.image_size
    batch = {"image": rng.standard_normal((b, s, s, 3)).astype(np.float32),
             "label": rng.integers(0, num_classes, b).astype(np.int32)}
    if with_val:
        batch["val_image"] = rng.standard_normal((b, s, s, 3)).astype(np.float32)
        batch["val_label"] = rng.integers(0, num_classes, b).astype(np.int32)
    return jax.device_put(batch)


def time_compiled(fn, args_fn, warmup, iters):
    """Median seconds of `fn(*args_fn())`, each call waited for; args_fn sees the last output."""
    times = []
    out = None
    for i in range(warmup + iters):
        call_args = args_fn(out)
        start = time.perf_counter()
        out = fn(*call_args)
        jax.block_until_ready(out)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times), times


def compile_method(shape, bench_method, generator, args):
    """One method's step, built as training builds it and compiled with the state donated:
    (compiled, (state, batch, rng, frozen), compile seconds)."""
    compiled, step_args, compile_s, _ = compile_cycle(shape, bench_method, generator, args)
    return compiled, step_args, compile_s


def compile_cycle(shape, bench_method, generator, args):
    """compile_method's (compiled, args, seconds) and the programs of one update_every cycle
    in order: [the step] or [the meta step] + (k - 1) x [the step between] (compiled once)."""
    config = make_config(shape, bench_method, args)
    num_classes = SHAPES[shape]["num_classes"]
    _, method, state = build_method(config, generator, num_classes)
    batch = make_batch(config, num_classes, method.needs_val)
    rng = jax.random.key(1)
    start = time.perf_counter()
    compiled = jax.jit(method.train_step, donate_argnums=(0,)).lower(
        state, batch, rng, method.frozen).compile()
    cycle = [compiled]
    if method.between_step is not None:
        between = jax.jit(method.between_step, donate_argnums=(0,)).lower(
            state, batch, rng, method.frozen).compile()
        cycle += [between] * (method.update_every - 1)
    return compiled, (state, batch, rng, method.frozen), time.perf_counter() - start, cycle


def prepare_method(shape, bench_method, generator, args):
    """Build and compile one method's step(s); returns (info, run_one) where run_one() takes
    one cycle of steps (one step, or update_every; the state donated, carried to the next
    call) and waits for it. info["cycle"] is the number of steps run_one takes."""
    _, (state, batch, rng, frozen), compile_s, cycle = compile_cycle(
        shape, bench_method, generator, args)
    info = {"compile_s": compile_s, "cycle": len(cycle),
            "flops": sum(flops_of(c) for c in cycle) / len(cycle)}
    holder = {"state": state}

    def run_one():
        # The donated input is gone after the call; carry the new state, as training does.
        for program in cycle:
            holder["state"], metrics = program(holder["state"], batch, rng, frozen)
        jax.block_until_ready((holder["state"], metrics))
    return info, run_one


def time_methods(shape, names, generator, args):
    """Compile every method, then time them interleaved: round r runs one step of each
    method in turn, so load from other processes hits all methods alike. Median per method."""
    prepared = {}
    for name in names:
        print(f"[{shape}] compiling {name} ...", flush=True)
        prepared[name] = prepare_method(shape, name, generator, args)
        print(f"[{shape}] {name}: compile {prepared[name][0]['compile_s']:.1f} s, "
              f"{prepared[name][0]['flops'] / 1e9:.2f} GFLOP/step", flush=True)
    times = {name: [] for name in names}
    for r in range(args.warmup + args.iters):
        for name in names:
            start = time.perf_counter()
            prepared[name][1]()
            if r >= args.warmup:  # per step: a cycle's time / its steps
                times[name].append((time.perf_counter() - start) / prepared[name][0]["cycle"])
        if r >= args.warmup:
            print(f"[{shape}] round {r - args.warmup + 1}/{args.iters}: " + ", ".join(
                f"{n} {1e3 * times[n][-1]:.0f} ms" for n in names), flush=True)
    return {name: dict(prepared[name][0], step_s=statistics.median(times[name]),
                       step_times_s=times[name]) for name in names}


def piece_costs(shape, generator, args):
    """FLOPs and seconds of the pieces: classifier fwd / fwd+bwd, generator, T, T fwd+bwd."""
    config = make_config(shape, "pcr", args)
    num_classes = SHAPES[shape]["num_classes"]
    model = build.create_model(config, num_classes)
    s = config.data.image_size
    variables = model.init(jax.random.key(0), jnp.zeros((1, s, s, 3)), train=False)
    b, sb = config.batch_size, config.synthetic_batch_size
    x = jax.random.normal(jax.random.key(1), (b, s, s, 3))
    z = jax.random.normal(jax.random.key(2), (sb,) + tuple(generator.latent_shape))
    y = jnp.zeros((sb,), jnp.int32)
    x01 = jax.random.uniform(jax.random.key(3), (sb, s, s, 3))
    key = jax.random.key(4)
    aug_kw = {"num_ops": config.augment.num_ops, "max_magnitude": config.augment.max_magnitude}

    def fwd(params, images):
        (logits, _), _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                     images, train=True, mutable=["batch_stats"])
        return logits

    def fwd_bwd(params, images):
        return jax.grad(lambda p: jnp.mean(jax.nn.log_softmax(fwd(p, images))[:, 0]))(params)

    def gen(w):
        return synthetic.synthesize(generator, generator.params, w, y, s)

    def gen_fwd_bwd(w):
        return jax.grad(lambda v: jnp.sum(gen(v)))(w)

    def aug(images):
        return synthetic_augment.rand_augment(key, images, **aug_kw)

    def aug_fwd_bwd(images):
        return jax.grad(lambda im: jnp.sum(aug(im)))(images)

    pieces = {"classifier_fwd": (fwd, (variables["params"], x)),
              "classifier_fwd_bwd": (fwd_bwd, (variables["params"], x)),
              "generator_fwd": (gen, (z,)),
              "generator_fwd_bwd_to_z": (gen_fwd_bwd, (z,)),
              "augment_fwd": (aug, (x01,)),
              "augment_fwd_bwd": (aug_fwd_bwd, (x01,))}
    out = {}
    for name, (fn, fn_args) in pieces.items():
        compiled = jax.jit(fn).lower(*fn_args).compile()
        median, _ = time_compiled(compiled, lambda _o, a=fn_args: a, 1, max(args.iters, 3))
        out[name] = {"flops": flops_of(compiled), "s": median}
    return out


def run_torch(shape, args, methods_run):
    """Run benchmarks/torch_reference.py in a subprocess; its JSON result (or None)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "torch.json")
        torch_methods = [m for m in methods_run if m in ("base", "gda", "pcr", "mgr_exact",
                                                          "mgr_fd")]
        cmd = [sys.executable, os.path.join(HERE, "torch_reference.py"), "--shape", shape,
               "--batch", str(args.batch), "--syn-batch", str(args.syn_batch or args.batch),
               "--iters", str(args.iters), "--warmup", str(args.warmup),
               "--methods", ",".join(torch_methods), "--generator", args.generator,
               "--out", path]
        if shape == "paper" and args.paper_gen_res:
            cmd += ["--paper-gen-res", str(args.paper_gen_res)]
        if shape == "paper" and args.paper_gen_channels:
            cmd += ["--paper-gen-channels", args.paper_gen_channels]
        print("running:", " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0 or not os.path.exists(path):
            print(f"torch reference failed (exit {proc.returncode})", flush=True)
            return None
        with open(path) as f:
            return json.load(f)


def ratio(a, b):
    return a / b if a and b else float("nan")


def print_table(shape, result, peak, peak_label):
    rows = result["methods"]
    pieces = result.get("pieces", {})
    unit = pieces.get("classifier_fwd", {}).get("flops")
    torch_rows = (result.get("torch") or {}).get("methods", {})
    print(f"\n== shape {shape}: {result['description']}")
    print(f"   generator: {result['generator']}")
    header = (f"{'method':<10} {'ms/step':>9} {'compile s':>9} {'GFLOP/step':>11} {'units':>6} "
              f"{'GFLOP/s':>9} {'MFU %':>6} {'torch ms':>9} {'JAX/torch':>9}")
    print(header)
    print("-" * len(header))
    for name, r in rows.items():
        achieved = r["flops"] / r["step_s"]
        mfu = f"{100 * achieved / peak:6.1f}" if peak else f"{'-':>6}"
        units = f"{r['flops'] / unit:6.1f}" if unit else f"{'-':>6}"
        t = torch_rows.get(name)
        t_ms = f"{1e3 * t['step_s']:9.1f}" if t else f"{'-':>9}"
        jt = f"{r['step_s'] / t['step_s']:9.2f}" if t else f"{'-':>9}"
        print(f"{name:<10} {1e3 * r['step_s']:9.1f} {r['compile_s']:9.1f} "
              f"{r['flops'] / 1e9:11.2f} {units} {achieved / 1e9:9.1f} {mfu} {t_ms} {jt}")
    if not peak:
        print(f"   (MFU: {peak_label})")
    ms = {k: v["step_s"] for k, v in rows.items()}
    print("ratios (JAX, this run):")
    for label, a, b, target in (("mgr_exact / mgr_fd", "mgr_exact", "mgr_fd", 1.0),
                                ("mgr_exact / base", "mgr_exact", "base", 10.0),
                                ("mgr_fd / base", "mgr_fd", "base", 10.0),
                                ("pcr / base", "pcr", "base", 3.0),
                                ("gda / base", "gda", "base", None),
                                ("mgr_exact / pcr", "mgr_exact", "pcr", None),
                                ("mgr_k4 / base", "mgr_k4", "base", None),
                                ("mgr_k16 / base", "mgr_k16", "base", None),
                                ("mgr_k4 / pcr", "mgr_k4", "pcr", None),
                                ("mgr_k16 / pcr", "mgr_k16", "pcr", None),
                                ("mgr_k4 / mgr_exact", "mgr_k4", "mgr_exact", None),
                                ("mgr_k16 / mgr_exact", "mgr_k16", "mgr_exact", None)):
        if a in ms and b in ms:
            value = ms[a] / ms[b]
            per_round = [ta / tb for ta, tb in zip(rows[a]["step_times_s"],
                                                   rows[b]["step_times_s"])]
            spread = (f"  rounds {min(per_round):.2f}-{max(per_round):.2f}"
                      if len(per_round) > 1 else "")
            verdict = "" if target is None else (
                f"  target <= {target:g}: {'met' if value <= target else 'MISSED'}")
            if target is not None and min(per_round) <= target < max(per_round):
                verdict += " (the rounds straddle it)"
            t_value = ""
            if a in torch_rows and b in torch_rows:
                t_value = f"   (torch {torch_rows[a]['step_s'] / torch_rows[b]['step_s']:.2f})"
            print(f"  {label:<20} {value:6.2f}{spread}{verdict}{t_value}")
    if pieces:
        print("pieces (one call each; units = classifier forward on the real batch):")
        for name, p in pieces.items():
            units = f"{p['flops'] / unit:6.2f}" if unit else "-"
            print(f"  {name:<24} {1e3 * p['s']:9.1f} ms {p['flops'] / 1e9:10.3f} GFLOP "
                  f"{units} units")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="small,paper", help="small, paper or both")
    parser.add_argument("--methods", default="base,pcr,mgr_exact,mgr_fd",
                        help=f"comma list of {sorted(VARIANTS)}")
    parser.add_argument("--batch", type=int, default=64, help="real (and D_val) batch")
    parser.add_argument("--syn-batch", type=int, default=0, help="synthetic batch; 0 = --batch")
    parser.add_argument("--paper-batch", type=int, default=0,
                        help="batch for the paper shape only (0 = --batch), e.g. 8 on a CPU")
    parser.add_argument("--iters", type=int, default=5, help="timed steps (median)")
    parser.add_argument("--paper-iters", type=int, default=0, help="0 = --iters")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compile")
    parser.add_argument("--generator", default="stylegan2",
                        choices=("stylegan2", "random", "shipped"),
                        help="shipped: the default config's generator (small shape, no --torch)")
    parser.add_argument("--paper-gen-res", type=int, default=0, help="0 = 64")
    parser.add_argument("--paper-gen-channels", default="",
                        help="channel_base,channel_max of the paper-shape generator "
                             "(default 8192,256)")
    parser.add_argument("--dtype", default="float32", help="classifier compute dtype")
    parser.add_argument("--gen-dtype", default="float32", help="generator compute dtype")
    parser.add_argument("--no-pieces", action="store_true",
                        help="skip timing the pieces (classifier, generator, T)")
    parser.add_argument("--torch", action="store_true",
                        help="also run benchmarks/torch_reference.py and compare")
    parser.add_argument("--out", default="", help="write all results as JSON here")
    args = parser.parse_args(argv)

    if args.generator == "shipped" and (args.torch or "paper" in args.shapes):
        parser.error("--generator shipped is the digits generator: --shapes small, no --torch")
    device = jax.devices()[0]
    peak, peak_label = peak_flops(device, args.dtype)
    methods_run = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods_run:
        if m not in VARIANTS:
            parser.error(f"unknown method {m!r}; choose from {sorted(VARIANTS)}")
    print(f"device: {device.platform} ({device.device_kind}), jax {jax.__version__}, "
          f"{os.cpu_count()} cores visible; peak: {peak_label}")
    report = {"device": {"platform": device.platform, "device_kind": device.device_kind,
                         "cpu_count": os.cpu_count(), "jax": jax.__version__,
                         "peak_flops": peak, "peak_label": peak_label},
              "args": vars(args), "shapes": {}}
    for shape in [s.strip() for s in args.shapes.split(",") if s.strip()]:
        if shape not in SHAPES:
            parser.error(f"unknown shape {shape!r}; choose from {sorted(SHAPES)}")
        shape_args = argparse.Namespace(**vars(args))
        if shape == "paper":
            shape_args.batch = args.paper_batch or args.batch
            shape_args.syn_batch = args.paper_batch or args.syn_batch
            shape_args.iters = args.paper_iters or args.iters
        spec = SHAPES[shape]
        generator = make_generator(shape, shape_args)
        syn = shape_args.syn_batch or shape_args.batch
        result = {
            "description": (f"ResNet-18 width {spec['width']} at {spec['image_size']}x"
                            f"{spec['image_size']}, {spec['num_classes']} classes, batch "
                            f"{shape_args.batch} real + {syn} synthetic (+ {shape_args.batch} "
                            f"D_val for MGR), {args.dtype}; median of {shape_args.iters} steps"),
            "generator": generator_description(shape, shape_args),
            "batch": shape_args.batch, "syn_batch": syn, "iters": shape_args.iters,
            "methods": {}}
        result["methods"] = time_methods(shape, methods_run, generator, shape_args)
        if not args.no_pieces:
            print(f"[{shape}] pieces ...", flush=True)
            result["pieces"] = piece_costs(shape, generator, shape_args)
        if args.torch:
            result["torch"] = run_torch(shape, shape_args, methods_run)
        report["shapes"][shape] = result
        print_table(shape, result, peak, peak_label)
        if args.out:  # after every shape, so a long run keeps what it finished.
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
