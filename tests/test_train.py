"""Optimiser, schedule, the base step and the run loop: resume, errors, divergence."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgr_jax.data import loader
from mgr_jax.errors import UserError
from mgr_jax.run import build, checkpoints, train
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_learning_rate_steps_down_at_the_milestones():
    config = tiny_config()
    config.optimizer.lr = 0.01
    config.optimizer.lr_milestones = (60, 120, 160)
    fn = build.create_learning_rate_fn(config, steps_per_epoch=10)
    got = [float(fn(s)) for s in (0, 599, 600, 1199, 1200, 1599, 1600, 1999)]
    want = [0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_optimizer_is_pytorch_nesterov_sgd():
    """Three steps against torch.optim.SGD's update, written out by hand."""
    config = tiny_config()
    config.optimizer.weight_decay = 0.01
    tx = build.create_optimizer(config, lambda step: 0.1)
    p = {"w": jnp.array([1.0, -2.0])}
    grads = [jnp.array([0.5, 0.1]), jnp.array([-0.3, 0.2]), jnp.array([0.05, -0.4])]
    state = tx.init(p)
    ref, buf = np.array([1.0, -2.0]), np.zeros(2)
    for g in grads:
        upd, state = tx.update({"w": g}, state, p)
        p = jax.tree.map(lambda a, b: a + b, p, upd)
        d = np.asarray(g) + 0.01 * ref
        buf = 0.9 * buf + d
        ref = ref - 0.1 * (d + 0.9 * buf)
    np.testing.assert_allclose(p["w"], ref, rtol=1e-6)


def test_train_step_lowers_the_loss_on_a_fixed_batch():
    config = tiny_config()
    start = train.setup(config)
    pipeline, method, state, rng = start.pipeline, start.method, start.state, start.loop_rng
    batch = next(pipeline.train_batches(1))
    step = jax.jit(method.train_step)
    first = None
    for _ in range(8):
        state, metrics = step(state, batch, rng, method.frozen)
        first = float(metrics["loss"]) if first is None else first
    assert float(metrics["loss"]) < 0.5 * first
    assert int(state.step) == 8


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_resume_is_bit_exact(tmp_path):
    config = tiny_config()
    whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
    r1 = train.train_and_evaluate(config, whole)
    assert train.train_and_evaluate(config, parts, max_epochs_this_run=1) is None
    r2 = train.train_and_evaluate(config, parts)
    a, b = train.restore_state(config, whole), train.restore_state(config, parts)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert _records(whole) == _records(parts)
    for key in ("best_epoch", "val_top1", "test_top1"):
        assert r1[key] == r2[key]


def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_config(**{"optimizer.lr_decay": 1e15})  # lr explodes in epoch 2.
    pipeline = loader.create_pipeline(config)
    with pytest.raises(train.TrainingDiverged) as err:
        train.train_and_evaluate(config, str(tmp_path))
    assert err.value.args[0] >= pipeline.steps_per_epoch
    ckpt = checkpoints.RunCheckpoints(str(tmp_path))
    assert ckpt.latest.latest_step() == 1
    ckpt.close()
    assert not os.path.exists(tmp_path / "results.json")


@pytest.mark.parametrize("override,match", [
    ({"method": "nope"}, "method='nope'"),
    ({"data.subset_fraction": 0.0}, "data.subset_fraction"),
    ({"optimizer.lr": -1.0}, "optimizer.lr"),
    ({"data.augment": "cutout"}, "data.augment"),
    ({"model.arch": "resnet19"}, "resnet19"),
    ({"model.init_checkpoint": "/no/such/dir"}, "model.init_checkpoint"),
    ({"data.name": "nosuchdata"}, "nosuchdata"),
])
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, override, match):
    workdir = tmp_path / "run"
    with pytest.raises((UserError, ValueError), match=match):
        train.train_and_evaluate(tiny_config(**override), str(workdir))
    assert not workdir.exists()


def test_workdir_with_another_config_is_refused(tmp_path):
    checkpoints.write_config(str(tmp_path), json.loads(tiny_config().to_json()))
    os.makedirs(tmp_path / "checkpoints" / "latest" / "1")  # the run saved an epoch
    with pytest.raises(UserError, match="seed"):
        train.train_and_evaluate(tiny_config(seed=5), str(tmp_path))


def test_main_prints_one_line_and_exits_non_zero(tmp_path):
    cmd = [sys.executable, "-m", "mgr_jax.main", "--config=configs/default.py",
           f"--workdir={tmp_path}/run", "--config.data.subset_fraction=1.5"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.subset_fraction=1.5" in lines[0]
    assert not os.path.exists(f"{tmp_path}/run")
