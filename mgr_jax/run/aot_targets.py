"""Compile-only accelerators for `mgr_jax.aot`: TPU topologies (libtpu) and GPUs described by an
XLA target config (the CUDA plugin), with the memory each device holds."""
import dataclasses
import os

import jax
from jax.experimental import topologies

from mgr_jax.errors import UserError

TPU_HBM_GIB = {"v5e": 16, "v5p": 95, "v6e": 32}  # per chip (Google Cloud's TPU pages)


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    """What XLA's GPU compiler reads of a device (public data sheet figures)."""
    name: str
    compute_capability: tuple
    sms: int
    fp32_cores_per_sm: int
    shared_memory_per_sm: int  # bytes
    shared_memory_per_block_optin: int  # bytes
    l2_bytes: int
    memory_bytes: int
    bandwidth: float  # bytes/s
    clock_ghz: float


GPU_SPECS = {
    "h100": GpuSpec("NVIDIA H100 80GB HBM3", (9, 0), 132, 128, 228 << 10, 227 << 10, 50 << 20,
                    81559 << 20, 3.35e12, 1.98),
    "a100": GpuSpec("NVIDIA A100-SXM4-80GB", (8, 0), 108, 64, 164 << 10, 163 << 10, 40 << 20,
                    81920 << 20, 2.039e12, 1.41),
    "a100-40gb": GpuSpec("NVIDIA A100-SXM4-40GB", (8, 0), 108, 64, 164 << 10, 163 << 10,
                         40 << 20, 40960 << 20, 1.555e12, 1.41),
}


def gpu_target_config(spec):
    """XLA's GPU target config (text proto) for a GpuSpec."""
    major, minor = spec.compute_capability
    return "\n".join([
        "gpu_device_info {",
        "  threads_per_block_limit: 1024", "  threads_per_warp: 32",
        "  shared_memory_per_block: 49152",
        f"  shared_memory_per_core: {spec.shared_memory_per_sm}",
        "  threads_per_core_limit: 2048", f"  core_count: {spec.sms}",
        f"  fpus_per_core: {spec.fp32_cores_per_sm}",
        "  block_dim_limit_x: 2147483647", "  block_dim_limit_y: 65535",
        "  block_dim_limit_z: 65535",
        f"  memory_bandwidth: {int(spec.bandwidth)}", f"  l2_cache_size: {spec.l2_bytes}",
        f"  clock_rate_ghz: {spec.clock_ghz}", f"  device_memory_size: {spec.memory_bytes}",
        f"  shared_memory_per_block_optin: {spec.shared_memory_per_block_optin}",
        f"  cuda_compute_capability {{ major: {major} minor: {minor} }}",
        "  registers_per_core_limit: 65536", "  registers_per_block_limit: 65536",
        "}",
        'platform_name: "CUDA"', "dnn_version_info { major: 9 minor: 8 }",
        f'device_description_str: "{spec.name}"', ""])


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    devices: list  # compile-only devices
    memory_bytes: int  # per device
    platform: str  # "tpu" or "cuda"


def _memory_from_proto(text):
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "device_memory_size":
            return int(value)
    raise UserError("the GPU target config has no device_memory_size")


def target(name):
    """The compile-only devices of a target name (see the module docstring)."""
    family, _, shape = name.partition(":")
    if family in TPU_HBM_GIB:
        # compile-only devices touch no chip: let several such processes load libtpu
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        try:
            if shape:
                topo = topologies.get_topology_desc(platform="tpu", topology_name=name)
            else:
                topo = topologies.get_topology_desc(
                    platform="tpu", chips_per_host_bounds=[1, 1, 1],
                    topology_name=f"{family}:{'1x1x1' if family == 'v5p' else '1x1'}")
        except RuntimeError as e:
            if "not installed" in str(e):
                raise UserError(f"target {name} needs libtpu: pip install \"jax[tpu]=="
                                f"{jax.__version__}\"") from None
            raise UserError(f"target {name}: {str(e).splitlines()[0]}") from None
        except Exception as e:  # libtpu's INVALID_ARGUMENT for a topology it does not know
            raise UserError(f"target {name}: {str(e).splitlines()[0][:300]}") from None
        return Target(name, list(topo.devices), TPU_HBM_GIB[family] << 30, "tpu")
    if family in GPU_SPECS or family == "gpu":
        if family == "gpu":
            try:
                with open(shape) as f:
                    text = f.read()
            except OSError as e:
                raise UserError(f"target {name}: cannot read the target config ({e.strerror})") \
                    from None
        else:
            text = gpu_target_config(GPU_SPECS[family])
        try:
            topo = topologies.get_topology_desc(platform="cuda", target_config=text,
                                                topology="1x1x1")
        except NotImplementedError:
            raise UserError(f"target {name} needs the CUDA plugin: pip install "
                            f"jax-cuda12-plugin=={jax.__version__}") \
                from None
        except Exception as e:
            raise UserError(f"target {name}: {str(e).splitlines()[0][:300]}") from None
        return Target(name, list(topo.devices), _memory_from_proto(text), "cuda")
    raise UserError(f"unknown target {name!r}; choose one of {[*TPU_HBM_GIB, *GPU_SPECS]}, a "
                    "TPU topology such as v5e:2x2, or gpu:FILE (an XLA GPU target config)")
