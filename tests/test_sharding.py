"""Data parallelism: 1 and 4 (forced CPU) devices give the same steps up to reassociation."""
import json
import os
import subprocess
import sys

import numpy as np

from tests.helpers import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start(devices):
    env = dict(os.environ, XLA_FLAGS=xla_flags(f"--xla_force_host_platform_device_count={devices}"),
               JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "tests/dp_losses.py", "mgr"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(process):
    out, err = process.communicate(timeout=900)
    assert process.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def test_one_and_four_devices_give_the_same_loss_curve():
    # The two processes compile and run side by side (compilation is mostly one thread).
    processes = _start(1), _start(4)
    one, four = (_result(p) for p in processes)
    assert one["devices"] == 1 and four["devices"] == 4
    # MGR's step holds base's (the real batch's CE, BatchNorm over the global batch) and adds
    # the synthetic and D_val batches and the meta-gradient: one program covers all of them.
    for method in ("mgr",):
        a, b = one["runs"][method], four["runs"][method]
        assert len(a) == len(b) == 3
        for step_a, step_b in zip(a, b):
            for key in ("loss", "ce", "meta_loss", "syn"):
                # float32 sums in another order across devices; steps compound it a little.
                np.testing.assert_allclose(step_b[key], step_a[key], rtol=1e-3,
                                           err_msg=f"{method} {key}")


def test_batch_not_divisible_by_devices_is_a_clear_error():
    from jax.sharding import Mesh

    from mgr_jax.run import sharding
    from mgr_jax.errors import UserError
    from tests.helpers import tiny_config

    class FakeMesh:  # three devices, without needing three.
        devices = np.zeros(3)
    import pytest
    with pytest.raises(UserError, match="divisible by the 3 devices"):
        sharding.check_divisible(tiny_config(), FakeMesh())
    assert Mesh  # imported for the type the real mesh has.
