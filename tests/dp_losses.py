"""Print per-step losses of a few jitted steps over all devices (run by test_sharding)."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from mgr_jax.run import sharding, train  # noqa: E402
from tests.helpers import one_stage_resnet, tiny_config  # noqa: E402


def losses_for(method, steps=3):
    # A small lr and lambda keep the first steps far from chaotic, so float reassociation
    # across devices stays at round-off size instead of being amplified step after step.
    # A one-stage ResNet (BatchNorm over the global batch) and one augmentation op: the same
    # sharded step, a smaller program to compile.
    config = tiny_config(method=method, **{"generator.kind": "random", "generator.resolution": 8,
                                           "lambda_": 0.1, "optimizer.lr": 0.005,
                                           "augment.num_ops": 1})
    mesh = sharding.create_mesh()
    start = train.setup(config, mesh, model=one_stage_resnet(config))
    pipeline, m, state, rng = start.pipeline, start.method, start.state, start.loop_rng
    step = jax.jit(m.train_step, donate_argnums=(0,),
                   out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)))
    out = []
    for i, batch in enumerate(pipeline.train_batches(1, with_val=m.needs_val)):
        if i == steps:
            break
        state, metrics = step(state, sharding.shard_batch(batch, mesh), rng, m.frozen)
        out.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    return out


if __name__ == "__main__":
    print(json.dumps({"devices": jax.device_count(),
                      "runs": {m: losses_for(m) for m in sys.argv[1:]}}))
