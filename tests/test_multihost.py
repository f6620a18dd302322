"""Multi-host training with real processes: two CPU processes on 127.0.0.1 forming one JAX job.

Each test starts `python -m mgr_jax.main` twice with `--config.distributed.*` (loopback only)
and checks what the README's "Scaling" section promises against one process with two
devices: the same metrics bit for bit, each file written once and whole, a resume after a
process is killed (with a damaged checkpoint set aside once), and one-line errors for the
mistakes people make with clusters.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from mgr_jax.errors import UserError
from mgr_jax.run import multihost
from tests.helpers import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tests/helpers.tiny_config as flags (the command line is what a cluster runs), on half its data
TINY = ["--config=configs/default.py", "--config.method=base", "--config.generator.kind=random",
        "--config.batch_size=32", "--config.eval_batch_size=128", "--config.data.image_size=8",
        "--config.data.subset_fraction=0.15", "--config.model.arch=resnet10",
        "--config.model.width=0.125", "--config.optimizer.lr_milestones=(2,)",
        "--config.log_every_steps=5"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir, args, devices=1, log=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=xla_flags(f"--xla_force_host_platform_device_count={devices}"))
    out = open(log or os.devnull, "w")  # noqa: SIM115 (closed with the process below)
    process = subprocess.Popen([sys.executable, "-m", "mgr_jax.main", f"--workdir={workdir}",
                                *TINY, *args], cwd=ROOT, env=env, stdout=out,
                               stderr=subprocess.PIPE, text=True)
    process.log = out
    return process


def _job(workdir, args, port, timeout_s=120, ids=(0, 1), extra=((), ())):
    """Processes `ids` of one two-process job sharing `workdir` (`extra`: each one's own
    further flags)."""
    dist = ["--config.distributed.enabled=True", "--config.distributed.num_processes=2",
            f"--config.distributed.coordinator_address=127.0.0.1:{port}",
            f"--config.distributed.timeout_s={timeout_s}"]
    return [_start(workdir, [*args, *dist, f"--config.distributed.process_id={i}", *extra[i]],
                   log=f"{workdir}.p{i}.log") for i in ids]


def _finish(process, timeout=300):
    _, err = process.communicate(timeout=timeout)
    process.log.close()
    return process.returncode, err


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_two_processes_match_one_process_with_two_devices_and_resume_after_a_kill(tmp_path):
    ref_dir, dir2 = str(tmp_path / "one_process"), str(tmp_path / "two_processes")
    # the reference runs beside the job (compilation is mostly one thread)
    reference = _start(ref_dir, ["--config.num_epochs=3"], devices=2)
    job = _job(dir2, ["--config.num_epochs=3"], _free_port())
    second = os.path.join(dir2, "checkpoints", "latest", "2")
    deadline = time.monotonic() + 900  # far more than it takes (a loaded machine compiles slowly)
    while not os.path.isdir(second) and time.monotonic() < deadline and job[1].poll() is None:
        time.sleep(0.05)
    assert os.path.isdir(second), "the job saved no second epoch"
    job[1].send_signal(signal.SIGKILL)  # process 1 dies mid-run; the scheduler ends the job
    job[0].send_signal(signal.SIGKILL)
    assert [_finish(p)[0] for p in job] == [-signal.SIGKILL] * 2, "killed before the end"
    steps = {which: sorted(int(s) for s in os.listdir(os.path.join(dir2, "checkpoints", which))
                           if s.isdigit()) for which in ("latest", "best")}
    assert steps["latest"][-1] == 2 and steps["best"], steps
    # the newest checkpoint is damaged as well: both processes must agree to skip it for the
    # best-validation one, and process 0 alone sets it aside
    saved = steps["latest"]
    newest = os.path.join(dir2, "checkpoints", "latest", str(saved[-1]))
    with open(os.path.join(newest, "state", "_METADATA"), "w") as f:
        f.write('{"tree_metadata": ')
    assert _finish(reference) == (0, "")
    resumed = _job(dir2, ["--config.num_epochs=3"], _free_port())
    (rc0, err0), (rc1, err1) = [_finish(p) for p in resumed]
    assert (rc0, rc1) == (0, 0), err0 + err1
    # (an older step the kill caught half deleted is set aside too, and said so, once)
    moved = os.listdir(os.path.join(dir2, "checkpoints", "damaged"))
    assert f"latest_{saved[-1]}" in moved and "damaged" not in err1
    for name in moved:
        which, step = name.split("_")
        assert err0.count(f"checkpoints/{which}/{step} is damaged") == 1
    # every record once, and the same bits as one process with two devices
    ref, got = _records(ref_dir), _records(dir2)
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    assert got == ref
    with open(os.path.join(dir2, "results.json")) as f, \
            open(os.path.join(ref_dir, "results.json")) as g:
        a, b = json.load(f), json.load(g)
    for key in ("best_epoch", "val_top1", "test_top1", "split_sizes"):
        assert a[key] == b[key]
    assert sorted(os.listdir(os.path.join(dir2, "tensorboard"))) and \
        len(os.listdir(os.path.join(dir2, "tensorboard"))) == 2  # one event file per leg


def _one_error_line(err):
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_processes_with_different_settings_are_refused_in_one_line(tmp_path):
    """Two processes of one job with another lr and seed: one line and status 2 on both,
    naming the fields, and nothing written."""
    mismatch = _job(str(tmp_path / "a"), [], _free_port(), timeout_s=60,
                    extra=((), ("--config.optimizer.lr=0.2", "--config.seed=3")))
    results = [_finish(p, timeout=120) for p in mismatch]
    assert [rc for rc, _ in results] == [2, 2]
    for _, err in results:
        line = _one_error_line(err)
        assert "process 1 has optimizer.lr=0.2 where process 0 has 0.05" in line
        assert "process 1 has seed=3 where process 0 has 0" in line
    assert not os.path.exists(tmp_path / "a")


def test_missing_processes_and_taken_ports_are_one_line_in_bounded_time():
    """The rendezvous' sides alone (what each process runs before JAX's runtime): a process
    that never comes, a port another program holds (and answers on, or not)."""
    own = {"seed": 0}
    start = time.monotonic()
    with pytest.raises(UserError, match=r"process\(es\) \[1\] of 2 did not join") as err:
        multihost._serve("127.0.0.1", _free_port(), 2, own, timeout_s=1)  # noqa: SLF001
    with pytest.raises(UserError, match="process 0 did not answer"):
        multihost._join("127.0.0.1", _free_port(), 1, own, timeout_s=1)  # noqa: SLF001
    with socket.socket() as other:  # another program listening on the job's port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(UserError, match="cannot listen .* the port is taken"):
            multihost._serve("127.0.0.1", port, 2, own, timeout_s=1)  # noqa: SLF001
        with pytest.raises(UserError, match="something other than process 0 of this job"):
            multihost._join("127.0.0.1", port, 1, own, timeout_s=1)  # noqa: SLF001
    assert time.monotonic() - start < 30 and "\n" not in str(err.value)


def test_fingerprint_ignores_per_host_fields_and_names_differences():
    config = {"seed": 0, "optimizer": {"lr": 0.1},
              "data": {"num_workers": 2, "manual_dir": "/local/a"},
              "distributed": {"process_id": 0, "num_processes": 2}}
    other = json.loads(json.dumps(config))
    other["data"].update(num_workers=8, manual_dir="/local/b")
    other["distributed"]["process_id"] = 1
    a, b = multihost.fingerprint(config, "runs/x"), multihost.fingerprint(other, "runs/x/")
    assert multihost.differences(a, {1: b}) is None
    other["optimizer"]["lr"] = 0.2
    c = multihost.fingerprint(other, "runs/y", max_epochs_this_run=3)
    line = multihost.differences(a, {1: c})
    assert "\n" not in line and "process 1 has optimizer.lr=0.2 where process 0 has 0.1" in line
    assert "--workdir='runs/y'" in line and "--max_epochs_this_run=3" in line
    assert len(multihost.source_hash()) == 16
