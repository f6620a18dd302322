"""StyleGAN-XL beside StyleGAN2-ADA: images/s of the jitted sampler, and MGR/base step time.

    python benchmarks/stylegan_xl.py [--batch 8] [--iters 5] [--step-batch 64] [--no-steps]
        [--fixtures ../shared/fixtures] [--platform cpu] [--quick]

Generators (the shared fixtures, loaded from their original snapshot files, plus one random
StyleGAN2-ADA at 16x16 so that each StyleGAN-XL generator has a StyleGAN2-ADA of its size):
  sg2ada_16       benchmarks/generator_kinds.py's StyleGAN2-ADA: 16x16, z/w 64, 2 mapping
                  layers, channel_base 2048, channel_max 64, 10 classes (random weights)
  sgxl_stem_16    sgxl_cond4_res16.pkl.xz: stylegan3-t stem, 16x16, 6 layers at 36x36 (64-24
                  channels), 4 classes
  sg2ada_32       sg2ada_cond10_res32.pkl: 32x32, 10 classes, channel_max 64
  sgxl_superres_32  sgxl_superres_cond4_res32.pkl.xz: the stem's 3 non-critical layers + 5 head
                  layers up to 52x52 (up to 4x upsampling inside a layer), 32x32, 4 classes
Table 1: first call of jit(sample) (compile + run), median s/batch of `iters` calls, images/s,
XLA FLOPs per image, and the same for jit(grad of sum(sample) w.r.t. z), the pass MPS runs.
Table 2 (unless --no-steps): the base and MGR (exact hypergradient) train steps of
configs/default.py's classifier with each generator, through benchmarks/generator_kinds.py's
`time_steps` (compiled first, then timed interleaved; medians). The classifier has 10 classes;
the 4-class StyleGAN-XL fixtures are wrapped as 10-class generators that sample class
label % 4 (`as_classes`): the same work per sample. --quick: --iters 2 --step-batch 16 unless
given.
"""
import argparse
import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402  (after the path set-up above)
import jax.numpy as jnp  # noqa: E402

from benchmarks import generator_kinds, step_time  # noqa: E402
from benchmarks.shapes import SHAPES  # noqa: E402
from mgr_jax.generators import stylegan2_ada, stylegan_xl  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "..", "shared", "fixtures")
SNAPSHOTS = {"sgxl_stem_16": (stylegan_xl, "sgxl_cond4_res16.pkl.xz"),
             "sg2ada_32": (stylegan2_ada, "sg2ada_cond10_res32.pkl"),
             "sgxl_superres_32": (stylegan_xl, "sgxl_superres_cond4_res32.pkl.xz")}
ORDER = ("sg2ada_16", "sgxl_stem_16", "sg2ada_32", "sgxl_superres_32")


def build(name, fixtures):
    """The named `Generator` (see the module docstring)."""
    if name == "sg2ada_16":
        return generator_kinds.build("stylegan2_ada", jax.random.key(0))
    module, filename = SNAPSHOTS[name]
    return module.load(os.path.join(fixtures, filename))


def as_classes(gen, num_classes):
    """`gen` behind `num_classes` labels (label % gen.num_classes), for the 10-class steps."""
    if gen.num_classes in (0, num_classes):
        return gen

    def sample(params, z, labels, rng=None):
        return gen.sample(params, z, labels % gen.num_classes, rng)
    return dataclasses.replace(gen, sample=sample, num_classes=num_classes)


def time_grad(gen, batch, iters, key):
    """(first-call s, median s per call, FLOPs per image) of jit(grad_z sum(sample(z)))."""
    kz, ky = jax.random.split(key)
    z = jax.random.normal(kz, (batch,) + tuple(gen.latent_shape))
    labels = jax.random.randint(ky, (batch,), 0, max(gen.num_classes, 1))
    grad = jax.grad(lambda z: jnp.sum(gen.sample(gen.params, z, labels)))
    start = time.perf_counter()
    compiled = jax.jit(grad).lower(z).compile()
    jax.block_until_ready(compiled(z))
    first = time.perf_counter() - start
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(compiled(z))
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), step_time.flops_of(compiled) / batch


def main(argv=None):
    """Time sampling (and its z-gradient) of each generator, then the train steps."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="batch of the sampling table")
    parser.add_argument("--iters", type=int, default=None, help="timed calls (median); 5")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compile")
    parser.add_argument("--step-batch", type=int, default=None,
                        help="real (= synthetic = D_val) batch of the train steps; 64")
    parser.add_argument("--no-steps", action="store_true", help="time sampling only")
    parser.add_argument("--quick", action="store_true", help="--iters 2 --step-batch 16")
    parser.add_argument("--fixtures", default=FIXTURES, help="the shared fixtures directory")
    parser.add_argument("--platform", default="cpu", help="cpu, gpu, ... or '' for JAX's default")
    args = parser.parse_args(argv)
    for name, full, quick in (("iters", 5, 2), ("step_batch", 64, 16)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.platform:
        jax.config.update("jax_platforms", args.platform)
    key = jax.random.key(0)
    gens, rows = [], []
    for name in ORDER:
        gen = build(name, args.fixtures)
        gens.append((name, gen))
        first, per_call, flops = generator_kinds.time_sample(gen, args.batch, args.iters, key)
        g_first, g_call, g_flops = time_grad(gen, args.batch, args.iters, key)
        n_params = sum(x.size for x in jax.tree.leaves(gen.params["params"]))
        rows.append((name, gen.resolution, n_params, first, per_call, flops, g_first, g_call,
                     g_flops))
        print(f"{name}: sample {args.batch / per_call:.0f} images/s, grad "
              f"{args.batch / g_call:.0f} images/s", flush=True)
    device = jax.devices()[0]
    print(f"\njit(sample) and jit(grad_z sum(sample)), batch {args.batch}, "
          f"{jax.default_backend()} ({device.device_kind}), median of {args.iters} calls")
    print(f"{'generator':17} {'res':>4} {'params':>9} {'compile s':>10} {'images/s':>9} "
          f"{'MFLOP/img':>10} {'grad compile s':>15} {'grad img/s':>11} {'grad MFLOP/img':>15}")
    for name, res, n, first, call, flops, g_first, g_call, g_flops in rows:
        print(f"{name:17} {res:>4} {n:>9,} {first:>10.2f} {args.batch / call:>9.0f} "
              f"{flops / 1e6:>10.1f} {g_first:>15.2f} {args.batch / g_call:>11.0f} "
              f"{g_flops / 1e6:>15.1f}")
    if args.no_steps:
        return
    num_classes = SHAPES["small"]["num_classes"]  # the classifier generator_kinds times
    steps = generator_kinds.time_steps([(n, as_classes(g, num_classes)) for n, g in gens], args)
    base = steps["base"]
    print(f"\ntrain steps: configs/default.py classifier (ResNet-18 width 0.25, 16x16, "
          f"10 classes), batch {args.step_batch} real + {args.step_batch} synthetic "
          f"(+ {args.step_batch} D_val for MGR), median of {args.iters} interleaved rounds")
    print(f"base step: {1e3 * base['step_s']:.1f} ms, compile {base['compile_s']:.1f} s")
    print(f"{'generator':17} {'MGR ms':>9} {'MGR/base':>9} {'compile s':>10} {'GFLOP/step':>11}")
    for name, _ in gens:
        r = steps[name]
        print(f"{name:17} {1e3 * r['step_s']:9.1f} {r['step_s'] / base['step_s']:9.2f} "
              f"{r['compile_s']:10.1f} {r['flops'] / 1e9:11.2f}")


if __name__ == "__main__":
    main()
