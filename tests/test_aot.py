"""Ahead-of-time compilation for accelerators that are not here (mgr_jax.aot).

The tests marked `aot` are the accelerator guard: they compile a small MGR step (exact and
finite-difference hypergradient) for a TPU topology and for an H100, so that an op that only
works on CPU, or a program a GPU compiler refuses, fails. They need libtpu and the CUDA
plugin, which `.ci/run` installs in a virtualenv of its own after the suite; without them they
skip. The others check the command's pieces on the CPU.
"""
import importlib.util
import lzma
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgr_jax.errors import UserError
from mgr_jax.run import aot, aot_targets
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _installed(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


HAVE_TPU = _installed("libtpu")
HAVE_CUDA = _installed("jax_plugins.xla_cuda12")


def _small_config():
    """tiny_config with the MPS step: 8x8, ResNet-10 at width 1/8, a random generator."""
    return tiny_config(method="mgr", batch_size=16, synthetic_batch_size=16)


@pytest.mark.aot
@pytest.mark.skipif(not (HAVE_TPU and HAVE_CUDA), reason="libtpu and the CUDA plugin are not "
                    "installed (.ci/run installs them for this guard)")
@pytest.mark.parametrize("name", ["v5e", "h100"])
def test_every_method_compiles_for_tpu_and_gpu(name):
    config = _small_config()
    target = aot_targets.target(name)
    assert target.platform == {"v5e": "tpu", "h100": "cuda"}[name]
    generator = aot.load_generator(config.generator, 10)
    steps = [(step, "float32") for step in aot.STEPS if step != "mgr"] + [
        ("mgr_exact", "bfloat16")]
    for step, dtype in steps:  # every method; MGR with both hypergradients and in bfloat16
        report = aot.compile_step(config, step, dtype, target, generator, 10)
        assert not report.error, (step, dtype, report.error)
        # the arguments are at least the state, batch and generator (padding may add to
        # them), and the donated state comes back in place of the old
        _, args = aot.abstract_step(aot.step_config(config, step, dtype), generator, 10,
                                    target.devices)
        state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(args[0])
                          if jax.dtypes.issubdtype(x.dtype, np.number))
        assert report.argument_bytes >= state_bytes + sum(
            x.size * x.dtype.itemsize for x in jax.tree.leaves(args[1:])
            if jax.dtypes.issubdtype(x.dtype, np.number))
        assert report.alias_bytes >= state_bytes // 2 and report.fits
        if name == "v5e":  # the TPU compiler's cost model
            assert report.flops > 0 and report.bytes_accessed > 0


SGXL_FIXTURE = os.path.join(ROOT, "..", "shared", "fixtures", "sgxl_cond4_res16.pkl.xz")


@pytest.mark.aot
@pytest.mark.skipif(not HAVE_CUDA, reason="the CUDA plugin is not installed")
@pytest.mark.skipif(not os.path.exists(SGXL_FIXTURE), reason="no StyleGAN-XL fixture here")
def test_stylegan_xl_exact_mgr_step_compiles_for_an_h100(tmp_path):
    """The H100's Triton GEMM emitter refused a dot over StyleGAN-XL's transposed Fourier-feature
    grid in the forward-over-reverse pass ("Couldn't find output tile sizes"); the synthesis
    input layer now has no dot over (H, W). Its fixture's shapes, the exact hypergradient."""
    plain = tmp_path / "sgxl.pkl"
    with lzma.open(SGXL_FIXTURE) as f, open(plain, "wb") as g:
        shutil.copyfileobj(f, g)
    config = _small_config()
    config.generator.kind, config.generator.checkpoint = "stylegan_xl", str(plain)
    generator = aot.load_generator(config.generator, 4)
    report = aot.compile_step(config, "mgr_exact", "float32", aot_targets.target("h100"),
                              generator, 4)
    assert not report.error, report.error


@pytest.mark.aot
@pytest.mark.skipif(not HAVE_CUDA, reason="the CUDA plugin is not installed")
def test_remat_lowers_the_memory_of_a_training_step_on_a_gpu():
    """model.remat on an H100: the compiled value-and-gradient of a ResNet-18 keeps less
    (the CPU compiler's buffer assignment does not show it)."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from mgr_jax.models import resnet

    devices = aot_targets.target("h100").devices
    replicated = NamedSharding(Mesh(np.asarray(devices), ("d",)), P())
    x = jax.ShapeDtypeStruct((32, 64, 64, 3), jnp.float32, sharding=replicated)
    temps = []
    for remat in (False, True):
        model = resnet.create_model("resnet18", num_classes=10, width=0.5, remat=remat)
        variables = jax.eval_shape(lambda m=model: m.init(jax.random.key(0),
                                                          jnp.zeros(x.shape), train=False))
        variables = jax.tree.map(
            lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=replicated), variables)

        def step(variables, x, model=model):
            def loss(params):
                (logits, _), stats = model.apply({**variables, "params": params}, x,
                                                 train=True, mutable=["batch_stats"])
                return jnp.mean(logits), stats
            return jax.value_and_grad(loss, has_aux=True)(variables["params"])

        compiled = jax.jit(step).lower(variables, x).compile()
        temps.append(compiled.memory_analysis().temp_size_in_bytes)
    assert temps[1] < 0.85 * temps[0], temps


def test_gpu_target_configs_describe_the_data_sheets():
    text = aot_targets.gpu_target_config(aot_targets.GPU_SPECS["h100"])
    fields = dict(line.strip().split(": ", 1) for line in text.splitlines()
                  if ": " in line and "{" not in line)
    assert fields["core_count"] == "132" and fields["device_memory_size"] == str(81559 << 20)
    assert "cuda_compute_capability { major: 9 minor: 0 }" in text
    assert aot_targets._memory_from_proto(text) == 81559 << 20  # noqa: SLF001
    a100 = aot_targets.gpu_target_config(aot_targets.GPU_SPECS["a100-40gb"])
    assert aot_targets._memory_from_proto(a100) == 40 << 30  # noqa: SLF001
    assert "major: 8 minor: 0" in a100


def test_class_counts_come_from_the_dataset_builders():
    config = tiny_config()
    assert aot.num_classes_of(config) == 10
    config.data.name = "cars"
    assert aot.num_classes_of(config) == 196
    config.data.name = "imagefolder"
    with pytest.raises(UserError, match="--num_classes"):
        aot.num_classes_of(config)


def test_step_configs_scale_the_synthetic_batch_with_the_real_one():
    config = tiny_config(batch_size=32, synthetic_batch_size=16)
    cfg = aot.step_config(config, "mgr_fd", "bfloat16", batch_size=96)
    assert (cfg.method, cfg.mps.hypergradient, cfg.model.dtype) == \
        ("mgr", "finite_difference", "bfloat16")
    assert (cfg.batch_size, cfg.synthetic_batch_size) == (96, 48)
    assert config.batch_size == 32 and config.method == "base"  # the caller's is untouched


def test_largest_batch_follows_the_memory_line(monkeypatch):
    """With memory affine in the batch (what compiled steps show), the search lands on the
    largest multiple of the device count under the device's memory, and checks it."""
    fixed, per_image, memory, devices = 3 << 30, 37 << 20, 16 << 30, 4
    compiled = []

    def fake_compile(config, step, dtype, target, generator, num_classes, batch_size=None):
        compiled.append(batch_size)
        return aot.Report("fake", dtype, step, batch_size, argument_bytes=fixed,
                          temp_bytes=per_image * batch_size, device_bytes=memory)

    monkeypatch.setattr(aot, "compile_step", fake_compile)
    target = aot_targets.Target("fake", [None] * devices, memory, "tpu")
    first = fake_compile(None, "pcr", "float32", target, None, 10, 64)
    best = aot.largest_batch(None, "pcr", "float32", target, None, 10, first)
    expected = (memory - fixed) // per_image // devices * devices
    assert best == expected, (best, expected, compiled)
    assert len(compiled) <= 4


class _FakeAccelerator:
    """A device that reports its memory as a GPU does (memory_stats' bytes_limit)."""
    platform, device_kind = "gpu", "Fake GPU"

    def __init__(self, limit):
        self.limit = limit

    def memory_stats(self):
        return {"bytes_limit": self.limit}


def test_the_compiled_step_is_the_trainers_and_its_memory_is_checked():
    """On the CPU's own devices: the step aot compiles, run on a batch, gives the same state
    and metrics as the trainer's jitted step (same program, same shardings); its memory
    analysis is the one the trainer checks before a run on an accelerator, which refuses a
    device one byte too small and accepts one that holds it."""
    from mgr_jax.run import config_lib
    from mgr_jax.run import sharding, train

    config = _small_config()
    config.mps.hypergradient = "finite_difference"
    mesh = sharding.create_mesh()
    start = train.setup(config, mesh)
    pipeline, method, state, rng = start.pipeline, start.method, start.state, start.loop_rng
    batch = sharding.shard_batch(next(iter(pipeline.train_batches(1, with_val=True))), mesh)
    trainer_memory = train._step_memory(config, method, state, rng, pipeline, mesh)  # noqa: SLF001
    pipeline.close()
    cpu = aot_targets.Target("cpu", jax.devices(), 1 << 40, "cpu")
    generator = aot.load_generator(config.generator, 10)
    report = aot.compile_step(config, "mgr_fd", "float32", cpu, generator, 10)
    peak = config_lib.compiled_peak_bytes(trainer_memory)
    assert report.peak_bytes == peak and report.temp_bytes == trainer_memory.temp_size_in_bytes
    with pytest.raises(UserError, match=r"batch_size=16 .*MiB per device .*compiler's memory"):
        config_lib.check_compiled_memory(config, trainer_memory, _FakeAccelerator(peak - 1))
    config_lib.check_compiled_memory(config, trainer_memory, _FakeAccelerator(peak))

    jitted, args = aot.abstract_step(aot.step_config(config, "mgr_fd", "float32"), generator,
                                     10, jax.devices())
    assert jax.tree.structure(args[0]) == jax.tree.structure(state)
    assert all(a.shape == b.shape and a.dtype == b.dtype
               for a, b in zip(jax.tree.leaves(args[0]), jax.tree.leaves(state)))
    compiled = jitted.lower(*args).compile()
    copy = jax.tree.map(lambda x: x.copy(), state)
    got_state, got = compiled(copy, batch, rng, method.frozen)
    want_state, want = jax.jit(method.train_step)(state, batch, rng, method.frozen)
    for a, b in zip(jax.tree.leaves((got_state, got)), jax.tree.leaves((want_state, want))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_command_refuses_bad_targets_and_steps_in_one_line(tmp_path, capsys):
    def run(*args):
        config = os.path.join(ROOT, "configs", "default.py")
        status = aot.main(["aot", f"--config={config}", *args])
        return status, capsys.readouterr().err.strip().splitlines()

    for args, message in (
            (["--targets=h200x"], "unknown target 'h200x'"),
            (["--targets=h100", "--steps=mgr_fast"], "unknown step 'mgr_fast'"),
            (["--targets=gpu:" + str(tmp_path / "none.txtpb")], "cannot read the target config"),
            (["--config.batch_size=-3"], "batch_size"),
            (["--out=" + __file__], "exists; give a new file name")):
        status, lines = run(*args)
        assert status == 2 and len(lines) == 1 and message in lines[0], lines
    if not HAVE_TPU:
        status, lines = run("--targets=v5e", "--steps=base")
        assert status == 2 and 'pip install "jax[tpu]==' in lines[0], lines
