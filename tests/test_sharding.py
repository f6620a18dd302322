"""Data parallelism: 1 and 4 (forced CPU) devices give the same steps up to reassociation."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(devices):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "tests/dp_losses.py", "base", "mgr"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_one_and_four_devices_give_the_same_loss_curve():
    one, four = _run(1), _run(4)
    assert one["devices"] == 1 and four["devices"] == 4
    for method in ("base", "mgr"):
        a, b = one["runs"][method], four["runs"][method]
        assert len(a) == len(b) == 3
        for step_a, step_b in zip(a, b):
            for key in ("loss",) + (("ce", "meta_loss", "syn") if method == "mgr" else ()):
                # float32 sums in another order across devices; steps compound it a little.
                np.testing.assert_allclose(step_b[key], step_a[key], rtol=1e-3,
                                           err_msg=f"{method} {key}")


def test_batch_not_divisible_by_devices_is_a_clear_error():
    from jax.sharding import Mesh

    from mgr_jax import sharding
    from mgr_jax.errors import UserError
    from tests.helpers import tiny_config

    class FakeMesh:  # three devices, without needing three.
        devices = np.zeros(3)
    import pytest
    with pytest.raises(UserError, match="divisible by the 3 devices"):
        sharding.check_divisible(tiny_config(), FakeMesh())
    assert Mesh  # imported for the type the real mesh has.
