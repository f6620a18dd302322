"""Generator kinds: samples/s of the jitted `Generator.sample`, and MGR/base step time with each.

    python benchmarks/generator_kinds.py [--kinds stylegan2_ada,biggan,fastgan,edm]
        [--batch 8] [--iters 5] [--edm-steps 18] [--step-batch 64] [--no-steps]
        [--platform cpu] [--quick]

Generators, all with random weights (speed does not depend on their values; no checkpoint):
  stylegan2_ada  benchmarks/step_time.py's small one: 16x16, z/w 64, 2 mapping layers,
                 channel_base 2048, channel_max 64, 10 classes
  biggan         the shared fixture's settings: 32x32, G_ch 16, 10 classes, hier, attention at 16
  fastgan        the shared fixture's settings: 256x256 (the smallest official size), ngf 8, nz 64
  edm            the shared fixture's DDPM++: 16x16, 16 channels, channel_mult (1, 2), 1 block,
                 attention at 8, 10 classes; deterministic Heun sampler with --edm-steps steps,
                 2 * steps - 1 network evaluations per sample
Table 1, per kind: the first call of jit(sample) (compile + run), the median of `iters` calls
after it, samples/s and XLA's FLOPs per sample, at --batch.
Table 2, per kind: the MGR (exact hypergradient) and base train steps of configs/default.py's
classifier (ResNet-18 width 0.25, CIFAR stem, 16x16, 10 classes) with that generator, built by
`mgr_jax.run.build.build(..., generator=gen)` through benchmarks/step_time.py's helpers; batch
--step-batch real + as many synthetic (+ as many D_val for MGR). Each step is compiled, then
base and every kind's MGR step are timed interleaved (each round runs one step of each), so the
ratios compare like with like when other processes load the machine; medians are reported.
--quick: --iters 2, --step-batch 16, --edm-steps 4 unless given: a few minutes on a 2-core CPU.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402  (after the path set-up above)
import jax.numpy as jnp  # noqa: E402

from benchmarks import step_time  # noqa: E402
from mgr_jax.generators import biggan, edm, fastgan  # noqa: E402
from mgr_jax.generators.base import Generator  # noqa: E402
from mgr_jax.models import (  # noqa: E402
    biggan as biggan_net,
    edm as edm_net,
    fastgan as fastgan_net,
)

KINDS = ("stylegan2_ada", "biggan", "fastgan", "edm")
BIGGAN_FIXTURE = dict(resolution=32, n_classes=10, G_ch=16, dim_z=32, shared_dim=16, hier=True,
                      G_shared=True, G_attn="16", BN_eps=1e-5, SN_eps=1e-6)
FASTGAN_FIXTURE = dict(ngf=8, nz=64, nc=3, im_size=256)
EDM_FIXTURE = dict(img_resolution=16, img_channels=3, label_dim=10, model_channels=16,
                   channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)


def random_variables(init, key, *args):
    """Variables in `init`'s shapes, filled with normal values (variances uniform in [0.5, 2]).

    Cheaper than running Flax init op by op, and the values do not change the timing.
    """
    shapes = jax.eval_shape(init, key, *args)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    keys = jax.random.split(key, len(leaves))
    out = [jax.random.uniform(k, s.shape, minval=0.5, maxval=2.0) if p[-1].key == "var"
           else 0.1 * jax.random.normal(k, s.shape) for k, (p, s) in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(treedef, out)


def build(kind, key, edm_steps=18):
    """A `Generator` of `kind` with the settings above and random variables."""
    if kind == "stylegan2_ada":
        args = argparse.Namespace(generator="stylegan2", gen_dtype="float32")
        return step_time.make_generator("small", args)
    if kind == "biggan":
        module = biggan_net.BigGAN(**BIGGAN_FIXTURE)
        variables = random_variables(module.init, key, jnp.zeros((1, module.latent_dim)),
                                     jnp.zeros(1, jnp.int32))
        return Generator(biggan.make_sample_fn(module), variables, (module.latent_dim,),
                         module.n_classes, module.resolution, kind)
    if kind == "fastgan":
        module = fastgan_net.FastGAN(**FASTGAN_FIXTURE)
        variables = random_variables(lambda k, z: module.init({"params": k, "noise": k}, z),
                                     key, jnp.zeros((1, module.nz)))
        return Generator(fastgan.make_sample_fn(module, "const"), variables, (module.nz,), 0,
                         module.im_size, kind)
    if kind == "edm":
        module = edm_net.build(**EDM_FIXTURE)
        res, ch = module.img_resolution, module.img_channels
        variables = random_variables(module.init, key, jnp.zeros((1, res, res, ch)),
                                     jnp.ones((1,)), jnp.zeros((1, module.label_dim)))
        return edm.make_generator(module, variables, num_steps=edm_steps)
    raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")


def time_sample(gen, batch, iters, key):
    """(first-call seconds, median seconds per call, FLOPs per sample) of jit(gen.sample)."""
    kz, ky = jax.random.split(key)
    z = jax.random.normal(kz, (batch,) + tuple(gen.latent_shape))
    labels = jax.random.randint(ky, (batch,), 0, max(gen.num_classes, 1))
    start = time.perf_counter()
    sample = jax.jit(gen.sample).lower(gen.params, z, labels).compile()
    jax.block_until_ready(sample(gen.params, z, labels))
    first = time.perf_counter() - start
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(sample(gen.params, z, labels))
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), step_time.flops_of(sample) / batch


def time_steps(gens, args):
    """{kind or "base": {"step_s", "compile_s", "flops"}}: base and each kind's MGR step,
    compiled first, then timed in interleaved rounds (step_time's helpers build them)."""
    ns = argparse.Namespace(batch=args.step_batch, syn_batch=0, dtype="float32",
                            generator="stylegan2")
    prepared = {}
    for name, method, gen in [("base", "base", gens[0][1])] + [
            (kind, "mgr_exact", gen) for kind, gen in gens]:
        print(f"compiling {method} step ({name}) ...", flush=True)
        prepared[name] = step_time.prepare_method("small", method, gen, ns)
        print(f"  compile {prepared[name][0]['compile_s']:.1f} s, "
              f"{prepared[name][0]['flops'] / 1e9:.2f} GFLOP/step", flush=True)
    times = {name: [] for name in prepared}
    for r in range(args.warmup + args.iters):
        for name, (_, run_one) in prepared.items():
            start = time.perf_counter()
            run_one()
            if r >= args.warmup:
                times[name].append(time.perf_counter() - start)
        if r >= args.warmup:
            print(f"round {r - args.warmup + 1}/{args.iters}: " + ", ".join(
                f"{n} {1e3 * t[-1]:.0f} ms" for n, t in times.items()), flush=True)
    return {name: dict(prepared[name][0], step_s=statistics.median(times[name]))
            for name in prepared}


def main(argv=None):
    """Build the kinds, time sampling and (unless --no-steps) the train steps; print tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma list of {KINDS}")
    parser.add_argument("--batch", type=int, default=8, help="batch of the sampling table")
    parser.add_argument("--iters", type=int, default=None, help="timed calls (median); 5")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compile")
    parser.add_argument("--edm-steps", type=int, default=None, help="Heun steps of edm; 18")
    parser.add_argument("--step-batch", type=int, default=None,
                        help="real (= synthetic = D_val) batch of the train steps; 64 as the "
                             "default config")
    parser.add_argument("--no-steps", action="store_true", help="time sampling only")
    parser.add_argument("--quick", action="store_true",
                        help="--iters 2 --step-batch 16 --edm-steps 4 unless given")
    parser.add_argument("--platform", default="cpu", help="cpu, gpu, ... or '' for JAX's default")
    args = parser.parse_args(argv)
    for name, full, quick in (("iters", 5, 2), ("step_batch", 64, 16), ("edm_steps", 18, 4)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for kind in kinds:
        if kind not in KINDS:
            parser.error(f"unknown kind {kind!r}; choose from {KINDS}")
    if args.platform:
        jax.config.update("jax_platforms", args.platform)
    key = jax.random.key(0)
    gens, rows = [], []
    for kind in kinds:
        gen = build(kind, key, args.edm_steps)
        gens.append((kind, gen))
        first, per_call, flops = time_sample(gen, args.batch, args.iters, key)
        n_params = sum(x.size for x in jax.tree.leaves(gen.params["params"]))
        rows.append((kind, f"{gen.resolution}x{gen.resolution}", n_params, first, per_call,
                     args.batch / per_call, flops))
    device = jax.devices()[0]
    print(f"jit(sample), batch {args.batch}, {jax.default_backend()} "
          f"({device.device_kind}), median of {args.iters} calls; edm: {args.edm_steps} Heun "
          f"steps = {2 * args.edm_steps - 1} network evaluations per sample")
    print(f"{'kind':13} {'output':>8} {'params':>9} {'first call s':>13} {'s/batch':>9} "
          f"{'samples/s':>10} {'GFLOP/sample':>13}")
    for kind, res, n, first, per_call, rate, flops in rows:
        print(f"{kind:13} {res:>8} {n:>9,} {first:>13.2f} {per_call:>9.4f} {rate:>10.1f} "
              f"{flops / 1e9:>13.4f}")
    if args.no_steps:
        return
    steps = time_steps(gens, args)
    base = steps["base"]
    print(f"\ntrain steps: configs/default.py classifier (ResNet-18 width 0.25, 16x16, "
          f"10 classes), batch {args.step_batch} real + {args.step_batch} synthetic "
          f"(+ {args.step_batch} D_val for MGR), median of {args.iters} interleaved rounds")
    print(f"base step: {1e3 * base['step_s']:.1f} ms, {base['flops'] / 1e9:.2f} GFLOP, "
          f"compile {base['compile_s']:.1f} s")
    print(f"{'kind':13} {'MGR ms':>9} {'MGR/base':>9} {'compile s':>10} {'GFLOP/step':>11} "
          f"{'G fwd GFLOP':>12} {'G fwd/base fwd':>15}")
    flops_per_sample = {row[0]: row[6] for row in rows}
    for kind, _ in gens:
        r = steps[kind]
        g_fwd = flops_per_sample[kind] * args.step_batch  # one forward of the synthetic batch
        print(f"{kind:13} {1e3 * r['step_s']:9.1f} {r['step_s'] / base['step_s']:9.2f} "
              f"{r['compile_s']:10.1f} {r['flops'] / 1e9:11.2f} {g_fwd / 1e9:12.3f} "
              f"{g_fwd / (base['flops'] / 3):15.2f}")
    print("(G fwd: one generator forward of the synthetic batch; base fwd: a third of the base "
          "step's FLOPs, one classifier forward of the real batch as SPEC counts it)")


if __name__ == "__main__":
    main()
