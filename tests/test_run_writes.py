"""What a run writes never follows a link out of its workdir, and a value that became NaN/inf
or a save that failed stops the run in one line.

Each test makes the hostile state itself (a planted symbolic link, NaN weights, a generator
giving inf, a save that fails like a full disk) and checks the line and what is on disk.
"""
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgr_jax import files, synthetic, variables_io
from mgr_jax.errors import TrainingDiverged, UserError
from mgr_jax.run import (
    build,
    checkpoints,
    config_lib,
    pretrained,
    run_log,
    train,
    workdir as workdir_lib,
)
from tests.helpers import tiny_config
from tests.test_datasets import _image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", ["run.lock", "metrics.jsonl", "config.json", "results.json",
                                  "checkpoints"])
def test_a_planted_link_in_the_workdir_is_refused_and_its_target_untouched(tmp_path, name):
    workdir, outside = tmp_path / "run", tmp_path / "precious.txt"
    workdir.mkdir()
    outside.write_text("the user's own file\n")
    os.symlink(outside, workdir / name)
    config_dict = {"seed": 0}
    with pytest.raises(UserError, match=f"{name} is a symbolic link") as err:
        workdir_lib.inspect(str(workdir), config_dict)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="is a symbolic link"):
        with workdir_lib.RunLock(str(workdir), config_dict):
            pass
    assert outside.read_text() == "the user's own file\n"


def test_a_dangling_link_is_neither_followed_nor_created_through(tmp_path):
    """The link appears after the checks (a race): the writes themselves refuse to follow."""
    workdir, target = tmp_path / "run", tmp_path / "elsewhere" / "metrics.jsonl"
    workdir.mkdir()
    (tmp_path / "elsewhere").mkdir()
    log = run_log.RunLog(str(workdir), keep=lambda r: True, tensorboard=False)
    os.symlink(target, workdir / "metrics.jsonl")
    with pytest.raises(OSError) as err:
        log.write("train", 1, {"loss": 1.0})
    assert err.value.errno == errno.ELOOP and not target.exists()
    os.symlink(target, workdir / f"results.json.{os.getpid()}.tmp")  # a planted temporary
    files.write_json(str(workdir / "results.json"), {"ok": 1})
    assert not target.exists() and json.loads((workdir / "results.json").read_text()) == {"ok": 1}
    lock = workdir / "run.lock"
    os.symlink(target, lock)
    with pytest.raises(UserError, match="run.lock is a symbolic link"):
        workdir_lib.RunLock(str(workdir), {"seed": 0}).__enter__()
    assert not target.exists()


def test_non_finite_init_checkpoint_is_refused_naming_the_array(tmp_path):
    config = tiny_config()
    start = train.setup(config)
    model, state = start.model, start.state
    stats = jax.tree.map(np.array, state.batch_stats)
    stats["bn1"]["var"][3] = np.nan  # one running variance
    path = str(tmp_path / "init")
    variables_io.save_variables(path, {"params": state.params, "batch_stats": stats},
                                {"kind": "torchvision_resnet", "arch": config.model.arch})
    config.model.init_checkpoint = path
    with pytest.raises(UserError, match="NaN or infinite values in batch_stats/bn1/var") as err:
        pretrained.load_init_checkpoint(config, model, 10)
    assert "\n" not in str(err.value)


class _NaNGenerator:
    """A generator whose output holds NaN and inf (as a damaged one's does)."""

    def sample(self, params, w, labels):
        del params, labels
        x = jnp.zeros((w.shape[0], 8, 8, 3))
        return x.at[:, 0, 0, 0].set(jnp.inf).at[:, 1, 1, 1].set(jnp.nan)


def test_non_finite_generator_images_stay_nan_so_the_run_stops():
    images = synthetic.synthesize(_NaNGenerator(), None, jnp.zeros((2, 4)), jnp.zeros(2, int), 8)
    assert np.isnan(np.asarray(images)[:, 0, 0, 0]).all()  # inf is not clipped to 1
    assert np.isnan(np.asarray(images)[:, 1, 1, 1]).all()
    assert np.isfinite(np.asarray(images)[:, 2:]).all()
    # the loop names the synthetic loss when it is the cause (CE finite, loss and syn NaN)
    steps = [{"loss": 1.0, "ce": 1.0, "syn": 0.5}, {"loss": np.nan, "ce": 1.0, "syn": np.nan}]
    with pytest.raises(TrainingDiverged) as err:
        train._check_finite(steps, 10)  # noqa: SLF001
    assert err.value.args[0] == 11 and "synthetic loss syn" in err.value.what


def test_non_finite_evaluation_stops_the_run():
    class State:
        step = 7

    class Pipeline:
        def eval_batches(self, split):
            yield {}

    fn = lambda state, batch: {"loss": jnp.nan, "correct": 1.0, "count": 2.0}  # noqa: E731
    with pytest.raises(TrainingDiverged) as err:
        train.evaluate(fn, State(), Pipeline(), "val")
    assert err.value.args[0] == 7 and err.value.what == "the val loss"


class _FullDisk:
    """A checkpoint manager whose asynchronous save fails as on a full disk."""

    def __init__(self):
        self.saved = []

    def save(self, step, args):
        self.saved.append(step)

    def wait_until_finished(self):
        if self.saved:
            raise OSError(errno.ENOSPC, "No space left on device")

    def close(self):
        pass


def test_a_failed_asynchronous_save_stops_with_one_line(tmp_path):
    ckpt = checkpoints.RunCheckpoints(str(tmp_path), keep_best=False)
    ckpt.latest.close()
    ckpt.latest = _FullDisk()
    ckpt.save(1, {"x": np.zeros(2)}, {"epoch": 1}, False)  # started; fails in the background
    with pytest.raises(UserError, match="saving the checkpoint of epoch 1 .* failed .*No space "
                                        "left on device.*run the same command to resume") as err:
        ckpt.save(2, {"x": np.zeros(2)}, {"epoch": 2}, False)
    assert "\n" not in str(err.value) and ckpt.latest.saved == [1]
    with pytest.raises(UserError, match="No space left"):
        ckpt.close()


def test_a_run_that_saved_nothing_may_start_again_with_another_config(tmp_path):
    """A run that failed after config.json but before its first checkpoint (a size too large
    for the machine, say) does not lock the workdir to its mistaken config."""
    workdir = str(tmp_path / "run")
    first, second = tiny_config(seed=1), tiny_config(seed=2)
    with workdir_lib.RunLock(workdir, config_lib.to_dict(first)):
        pass  # config.json written, then the run failed
    workdir_lib.inspect(workdir, config_lib.to_dict(second))  # accepted
    with workdir_lib.RunLock(workdir, config_lib.to_dict(second)):
        pass
    assert workdir_lib.read_config(workdir)["seed"] == 2
    os.makedirs(os.path.join(workdir, "checkpoints", "latest", "1"))  # an epoch was saved
    with pytest.raises(UserError, match=r"different config: seed \(2 -> 3\)"):
        workdir_lib.inspect(workdir, config_lib.to_dict(tiny_config(seed=3)))
    with pytest.raises(UserError, match=r"different config: seed \(2 -> 3\)"):
        with workdir_lib.RunLock(workdir, config_lib.to_dict(tiny_config(seed=3))):
            pass
    assert workdir_lib.read_config(workdir)["seed"] == 2


@pytest.mark.parametrize("override,match", [
    ({"finder.hidden_dim": 10 ** 9},
     r"finder.hidden_dim=1000000000 must be an integer >= 0 and <= 65536"),
    ({"generator.latent_dim": 10 ** 9}, r"generator.latent_dim=1000000000 must be in"),
    ({"optimizer.lr_milestones": (200000000,)}, "must be epochs <= 100,000"),
    ({"num_epochs": 10 ** 9}, r"num_epochs=1000000000 must be in \[1, 100000\]"),
])
def test_sizes_from_the_config_are_bounded_before_anything_is_written(override, match):
    with pytest.raises(UserError, match=match):
        config_lib.validate(tiny_config(method="mgr", **override))


def test_a_step_counter_past_int32_is_refused():
    config = tiny_config(**{"num_epochs": 100000})
    with pytest.raises(UserError, match="past the int32 step counter"):
        build.create_learning_rate_fn(config, 30000)


def _children(pid):
    """Child processes of `pid`, whichever of its threads started them."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
        except FileNotFoundError:  # the thread ended between the listing and the read
            continue
    return found


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads /proc")
def test_sigterm_stops_between_steps_and_ends_the_workers(tmp_path):
    """SIGTERM as soon as the input workers run (the first step is still compiling): the run
    stops after that step, one line, status 130, no worker left."""
    folder = str(tmp_path / "folder")
    _image_folder(folder, [40, 40, 40])
    cmd = [sys.executable, "-m", "mgr_jax.main", "--config=configs/imagefolder.py",
           f"--workdir={tmp_path}/run", f"--config.data.manual_dir={folder}",
           "--config.model.init_checkpoint=", "--config.method=base",
           "--config.data.num_workers=2", "--config.num_epochs=40", "--config.batch_size=8",
           "--config.eval_batch_size=16", "--config.data.image_size=16",
           "--config.model.arch=resnet10", "--config.model.width=0.125",
           "--config.data.val_fraction=0.2"]
    out = open(tmp_path / "out.txt", "w")  # noqa: SIM115
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    workers = []
    while len(workers) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
        workers = _children(process.pid)
    time.sleep(1.0)
    workers = _children(process.pid)
    assert len(workers) >= 2  # grain's two workers (and its resource tracker)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    out.close()
    assert process.returncode == 130
    lines = err.splitlines()  # no resource-tracker warning about prefetched batches either
    assert len(lines) == 1 and lines[0].startswith("error: stopped by Ctrl-C or SIGTERM")
    assert "run the same command to resume" in lines[0]
    time.sleep(2)
    assert not [w for w in workers if os.path.exists(f"/proc/{w}")], "workers left running"


def test_closed_loop_tracebacks_of_a_failed_restore_are_dropped_and_nothing_else():
    """What tensorstore prints after orbax failed to restore a damaged checkpoint (written in
    pieces, as Python prints a traceback), and any other traceback or text, passes or not."""
    out = io.StringIO()
    stream = checkpoints._WithoutClosedLoopTracebacks(out)  # noqa: SLF001
    closed = ["Traceback (most recent call last):\n", '  File "base_events.py", line 806, in ',
              "call_soon_threadsafe\n", "    self._check_closed()\n", "RuntimeError", ": ",
              "Event loop is closed", "\n"]
    other = ["Traceback (most recent call last):\n", '  File "x.py", line 1, in f\n',
             "ValueError: something else\n"]
    for piece in closed[:3]:
        stream.write(piece)
    stream.flush()  # a flush in the middle keeps the traceback held
    for piece in closed[3:] + ["warning: one line\n"] + other + closed:
        stream.write(piece)
    assert out.getvalue() == "warning: one line\n" + "".join(other)
