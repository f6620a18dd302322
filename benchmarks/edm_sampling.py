"""Samples per second of the jitted deterministic EDM sampler, and what MGR pays for it.

    python benchmarks/edm_sampling.py [--batch 8] [--steps 5 18] [--iters 3] [--platform cpu]
                                      [--loop]

Uses the network of the shared fixture `edm_songunet_cond10_res16.pkl` (conditional DDPM++
SongUNet, 16x16, 16 channels, 189,523 parameters), converted with `converters.edm`; without the
fixture the same configuration is built with random weights (speed does not depend on them).
For each step count it times the first call (compile + run) and the median of `iters` calls of
  * sample:  heun_sample(latents) -- what generating a synthetic batch costs;
  * grad:    d sum(x^2) / d latents through the sampler -- what MPS/MGR pays, since the
             hypergradient backpropagates through G(F(z)) into the finder;
and one network evaluation alone. One sample costs 2 * steps - 1 network evaluations (Heun,
last step Euler), so "evals/s" = samples/s * (2 * steps - 1) should stay near the single-eval
rate: the sampler adds no overhead of its own. The Heun steps are fully unrolled (the default of
`heun_sample`); --loop also times them as a `lax.scan` loop (unroll=1), which compiles faster
but whose gradient runs several times slower on XLA:CPU.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                       "shared", "fixtures", "edm_songunet_cond10_res16.pkl")


def fixture_network(path):
    """(module, variables, source) from the fixture, or its configuration with random weights."""
    import jax

    from mgr_jax.models import edm as edm_net

    if os.path.isfile(path):
        from converters import edm as edm_converter
        module, variables = edm_converter.convert(path)
        return module, variables, "fixture weights"
    module = edm_net.build(img_resolution=16, img_channels=3, label_dim=10, model_channels=16,
                       channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)
    x = np.zeros((1, 16, 16, 3), np.float32)
    variables = jax.jit(module.init)(jax.random.PRNGKey(0), x, np.ones(1, np.float32),
                                     np.zeros((1, 10), np.float32))
    return module, variables, "random weights (fixture not found)"


def timed(fn, *args, iters=3):
    """(first call seconds, median seconds of `iters` further calls) of a jitted fn."""
    import jax
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def main():
    """Build the network, time sampling and its gradient, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 18])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--platform", default=None, help="jax platform, e.g. cpu or gpu")
    parser.add_argument("--fixture", default=FIXTURE)
    parser.add_argument("--loop", action="store_true", help="also time unroll=1 (a scan loop)")
    args = parser.parse_args()
    if args.platform:
        os.environ["JAX_PLATFORMS"] = args.platform

    import jax
    import jax.numpy as jnp

    from mgr_jax.generators import edm


    module, variables, source = fixture_network(args.fixture)
    rng = np.random.default_rng(0)
    n = args.batch
    latents = rng.standard_normal((n, 16, 16, 3)).astype(np.float32)
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), batch {n}, "
          f"{source}, {os.cpu_count()} cpu(s) visible")

    net = jax.jit(lambda v, x, s, c: module.apply(v, x, s, c))
    first, med = timed(net, variables, latents, np.full(n, 2.0, np.float32), labels,
                       iters=args.iters)
    eval_rate = n / med
    print(f"one network evaluation: {med * 1e3:8.1f} ms  ({eval_rate:8.1f} image-evals/s; "
          f"compile+run {first:.1f} s)")
    print(f"{'steps':>5} {'evals':>5} {'what':>11} {'compile+run s':>13} {'ms/batch':>9} "
          f"{'samples/s':>9} {'evals/s':>8} {'x one eval':>10}")
    for steps in args.steps:
        evals = 2 * steps - 1
        for unroll in ([True, 1] if args.loop else [True]):
            def sample(v, z, c, steps=steps, unroll=unroll):
                return edm.heun_sample(module, v, z, c, num_steps=steps, unroll=unroll)

            def grad(v, z, c, sample=sample):
                return jax.grad(lambda z: jnp.sum(sample(v, z, c) ** 2))(z)

            for what, fn in (("sample", sample), ("grad", grad)):
                first, med = timed(jax.jit(fn), variables, latents, labels, iters=args.iters)
                rate = n / med
                label = what if unroll is True else what + " loop"
                print(f"{steps:5d} {evals:5d} {label:>11} {first:13.1f} {med * 1e3:9.1f} "
                      f"{rate:9.2f} {rate * evals:8.1f} {eval_rate / rate:10.1f}", flush=True)


if __name__ == "__main__":
    main()
