"""Data parallelism over a device mesh (one host or many), with jax.sharding.

The batch (real, D_val and synthetic) is split over the mesh axis "data"; classifier params,
BatchNorm statistics, finder, optimiser states and the generator are replicated. BatchNorm
normalises with the statistics of the *global* batch (XLA all-reduces the moments), i.e.
torch's SyncBatchNorm under DDP rather than DDP's default per-device statistics; so a run gives
the same results on 1 or N devices up to float reassociation (tested), and the running
statistics need no broadcast from rank 0 as DDP does.
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mgr_jax.errors import UserError


def maybe_initialize_distributed(config):
    """Start jax.distributed when the config (or the cluster environment) asks for it."""
    dist = config.get("distributed")
    if dist is not None and dist.enabled:
        kwargs = {}
        if dist.coordinator_address:
            kwargs = dict(coordinator_address=dist.coordinator_address,
                          num_processes=dist.num_processes, process_id=dist.process_id)
        jax.distributed.initialize(**kwargs)  # no kwargs: read from SLURM / TPU / env.


def create_mesh():
    return Mesh(np.asarray(jax.devices()), ("data",))


def check_divisible(config, mesh):
    n = mesh.devices.size
    for name in ("batch_size", "eval_batch_size", "synthetic_batch_size"):
        value = config.get(name)
        if value is not None and value % n:
            raise UserError(f"{name}={value} must be divisible by the {n} devices in use "
                            f"(data parallelism splits each batch evenly)")


def replicated(mesh):
    return NamedSharding(mesh, P())


def data_sharded(mesh):
    return NamedSharding(mesh, P("data"))


def replicate(tree, mesh):
    return jax.device_put(tree, replicated(mesh))


def shard_batch(batch, mesh):
    """Global arrays split over "data" from a batch dict of numpy arrays.

    Every host's pipeline yields the global batch; each host contributes its own rows.
    """
    sharding = data_sharded(mesh)
    pid, nproc = jax.process_index(), jax.process_count()

    def one(x):
        local = np.asarray(x)
        if nproc > 1:
            n = local.shape[0] // nproc
            local = local[pid * n:(pid + 1) * n]
        return jax.make_array_from_process_local_data(sharding, local)
    return {k: one(v) for k, v in batch.items()}
