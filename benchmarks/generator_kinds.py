"""Samples per second of the jitted `Generator.sample` for the BigGAN and FastGAN kinds.

    python benchmarks/generator_kinds.py [--batch 8] [--iters 5] [--platform cpu]

Both generators use the settings of the shared fixtures (BigGAN 32x32, G_ch 16, 10 classes,
hier, attention at 16; FastGAN 256x256, ngf 8, nz 64) with randomly initialised variables:
speed does not depend on the weight values, and no checkpoint file is needed. Times the first
call (compile + run) and the median of `iters` timed calls after it; prints a table.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402  (after the path set-up above)
import jax.numpy as jnp  # noqa: E402

from mgr_jax.generators import biggan, fastgan  # noqa: E402
from mgr_jax.generators.base import Generator  # noqa: E402

BIGGAN_FIXTURE = dict(resolution=32, n_classes=10, G_ch=16, dim_z=32, shared_dim=16, hier=True,
                      G_shared=True, G_attn="16", BN_eps=1e-5, SN_eps=1e-6)
FASTGAN_FIXTURE = dict(ngf=8, nz=64, nc=3, im_size=256)


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


def build(kind, key):
    """A `Generator` of `kind` with the fixture settings and random variables."""
    if kind == "biggan":
        module = biggan.BigGAN(**BIGGAN_FIXTURE)
        variables = random_variables(module.init, key, jnp.zeros((1, module.latent_dim)),
                                     jnp.zeros(1, jnp.int32))
        return Generator(biggan.make_sample_fn(module), variables, (module.latent_dim,),
                         module.n_classes, module.resolution, kind)
    module = fastgan.FastGAN(**FASTGAN_FIXTURE)
    variables = random_variables(lambda k, z: module.init({"params": k, "noise": k}, z), key,
                                 jnp.zeros((1, module.nz)))
    return Generator(fastgan.make_sample_fn(module, "const"), variables, (module.nz,), 0,
                     module.im_size, kind)


def time_sample(gen, batch, iters, key):
    """(first-call seconds, median seconds per call) of jit(gen.sample) on one batch."""
    kz, ky = jax.random.split(key)
    z = jax.random.normal(kz, (batch,) + gen.latent_shape)
    labels = jax.random.randint(ky, (batch,), 0, max(gen.num_classes, 1))
    sample = jax.jit(gen.sample)
    start = time.perf_counter()
    jax.block_until_ready(sample(gen.params, z, labels))
    first = time.perf_counter() - start
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(sample(gen.params, z, labels))
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def main():
    """Build both kinds, time them, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--platform", default="cpu", help="cpu, gpu, ... or '' for JAX's default")
    args = parser.parse_args()
    if args.platform:
        jax.config.update("jax_platforms", args.platform)
    key = jax.random.key(0)
    rows = []
    for kind in ("biggan", "fastgan"):
        gen = build(kind, key)
        first, per_call = time_sample(gen, args.batch, args.iters, key)
        n_params = sum(x.size for x in jax.tree.leaves(gen.params["params"]))
        rows.append((kind, f"{gen.resolution}x{gen.resolution}", n_params, first, per_call,
                     args.batch / per_call))
    print(f"jit(sample), batch {args.batch}, {jax.default_backend()} "
          f"({jax.devices()[0].device_kind}), median of {args.iters} calls")
    print(f"{'kind':8} {'output':>8} {'params':>9} {'first call s':>13} {'s/batch':>9} "
          f"{'samples/s':>10}")
    for kind, res, n, first, per_call, rate in rows:
        print(f"{kind:8} {res:>8} {n:>9,} {first:>13.2f} {per_call:>9.4f} {rate:>10.1f}")


if __name__ == "__main__":
    main()
