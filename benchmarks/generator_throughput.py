"""Images/s of a jitted StyleGAN2-ADA `Generator.sample` (mapping + synthesis + clip).

Two configurations: the fixture's (32x32, 10 classes; the converted fixture weights when
../shared/fixtures is present, random weights otherwise) and a 256x256 one shaped like the
official `paper256` config (random weights). Timing starts after compilation and each batch is
waited for with block_until_ready.

Run from the repository root:
    python benchmarks/generator_throughput.py [--batch 16] [--iters 3] [--dtypes float32,bfloat16]
"""
import argparse
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mgr_jax.generators import stylegan2_ada as sg_generator  # noqa: E402
from mgr_jax.models import stylegan2  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                       "fixtures", "sg2ada_cond10_res32.pkl")
CONFIGS = {
    "fixture32": dict(z_dim=64, w_dim=64, c_dim=10, img_resolution=32, img_channels=3,
                      mapping_layers=2, channel_base=2048, channel_max=64, conv_clamp=256.0),
    "paper256": dict(z_dim=512, w_dim=512, c_dim=0, img_resolution=256, img_channels=3,
                     mapping_layers=8, channel_base=16384, channel_max=512, conv_clamp=256.0),
}


def build(name, dtype, seed):
    """(module, variables, weights description) for one named configuration."""
    if name == "fixture32" and os.path.exists(FIXTURE):
        from converters import stylegan2_ada as converter

        module, variables = converter.convert(FIXTURE, dtype=dtype)
        return module, variables, "fixture"
    module = stylegan2.Generator(**CONFIGS[name], dtype=dtype)
    return module, stylegan2.random_variables(module, seed), "random"


def time_sample(module, variables, batch, iters, seed):
    """(compile seconds, seconds per batch) of the jitted Generator.sample."""
    gen = sg_generator.from_module(module, variables)
    sample = jax.jit(gen.sample)
    kz, kl = jax.random.split(jax.random.key(seed))
    z = jax.random.normal(kz, (batch, module.z_dim))
    labels = jax.random.randint(kl, (batch,), 0, max(module.c_dim, 1))
    start = time.perf_counter()
    sample(gen.params, z, labels).block_until_ready()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(iters):
        out = sample(gen.params, z, labels)
    out.block_until_ready()
    return compile_s, (time.perf_counter() - start) / iters


def main(argv=None):
    """Print one table row per (configuration, dtype)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--configs", default="fixture32,paper256")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    print(f"device: {device.platform} ({device.device_kind}), batch {args.batch}, "
          f"{args.iters} timed iterations after compile")
    header = f"{'config':<10} {'res':>4} {'weights':<8} {'dtype':<9} {'compile s':>9} " \
             f"{'ms/batch':>9} {'img/s':>9}"
    print(header)
    print("-" * len(header))
    for name in args.configs.split(","):
        for dtype in args.dtypes.split(","):
            module, variables, weights = build(name, dtype, args.seed)
            compile_s, per_batch = time_sample(module, variables, args.batch, args.iters,
                                               args.seed)
            print(f"{name:<10} {module.img_resolution:>4} {weights:<8} {dtype:<9} "
                  f"{compile_s:>9.2f} {per_batch * 1e3:>9.1f} {args.batch / per_batch:>9.1f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
