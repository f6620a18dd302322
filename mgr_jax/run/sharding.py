"""Data parallelism over a device mesh (one host or many), with jax.sharding.

The batch (real, D_val and synthetic) is split over the mesh axis "data"; classifier params,
BatchNorm statistics, finder, optimiser states and the generator are replicated. BatchNorm
normalises with the statistics of the *global* batch (XLA all-reduces the moments), i.e.
torch's SyncBatchNorm under DDP rather than DDP's default per-device statistics, and the
running statistics need no broadcast from rank 0 as DDP does. One step gives the same results
on 1 or N devices up to float reassociation (tested); over a run those round-off differences
grow as training amplifies them (README, "Scaling"). N processes with one device each give
the same bits as one process with N devices (tests/test_multihost.py).
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mgr_jax.errors import UserError


def create_mesh():
    return Mesh(np.asarray(jax.devices()), ("data",))


def process_shard(mesh):
    """(i, n): this process feeds part i of n equal, consecutive parts of every batch.

    The mesh's devices must come process by process, each process with as many devices (as
    `jax.devices()` orders them), so that a process's rows are one block of the batch.
    """
    owners = [d.process_index for d in mesh.devices.flat]
    processes = sorted(set(owners))
    per = len(owners) // len(processes)
    if owners != [p for p in processes for _ in range(per)]:
        raise UserError(f"the devices of the {len(processes)} processes are not grouped by "
                        f"process in equal numbers ({owners}); give every host as many "
                        "devices")
    return processes.index(jax.process_index()), len(processes)


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

    Each process's pipeline yields only its rows of the global batch (`process_shard`: the
    pipeline is made with `shard=`), so no host decodes another's images.
    """
    sharding = data_sharded(mesh)
    count = process_shard(mesh)[1]

    def one(x):
        local = np.asarray(x)
        return jax.make_array_from_process_local_data(
            sharding, local, (local.shape[0] * count,) + local.shape[1:])
    return {k: one(v) for k, v in batch.items()}
