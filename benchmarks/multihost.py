"""Multi-host runs of a config with real processes on 127.0.0.1, against one process.

    python benchmarks/multihost.py --out=docs/results/multihost [--config=configs/default.py]

What it runs (each a `python -m mgr_jax.main` subprocess, CPU devices forced with XLA_FLAGS,
loopback only), and what it writes to --out (summary.json, summary.md, every run's
metrics.jsonl, results.json and console logs):
  1. the config on one process with 1, 2 and 4 devices (what the device count does to results:
     per-step train loss and per-epoch validation accuracy, side by side);
  2. the same config as 2 processes x 1 device, --repeats times in fresh workdirs, each with
     a wall-clock limit (a hang is reported, not waited for): equal bit for bit to 1 process
     x 2 devices? each record written once?
  3. 2 processes killed with SIGKILL (process 1 first, once `--kill_after` epochs are saved;
     how long process 0 takes to stop by itself is recorded), then both started again: equal
     to the uninterrupted run?
With `--drift_only`, only one epoch on 1, 2 and 4 devices with a record per step
(drift.json: how far the per-step losses of 2 and 4 devices are from 1 device's).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(config, workdir, devices, extra, log):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "mgr_jax.main", f"--config={config}",
                                 f"--workdir={workdir}", *extra], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def _dist(port, pid):
    return ["--config.distributed.enabled=True", "--config.distributed.num_processes=2",
            f"--config.distributed.coordinator_address=127.0.0.1:{port}",
            f"--config.distributed.process_id={pid}"]


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _wait(processes, limit_s):
    """Return codes, or None for each process still running after `limit_s` (then killed)."""
    deadline = time.monotonic() + limit_s
    codes = []
    for p in processes:
        try:
            codes.append(p.wait(timeout=max(deadline - time.monotonic(), 1)))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            codes.append(None)
    return codes


def one_process(args, devices):
    workdir = os.path.join(args.out, f"one_process_{devices}dev")
    shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.time()
    code = _wait([_launch(args.config, workdir, devices, args.extra, f"{workdir}.log")],
                 args.limit_s)[0]
    return {"run": f"1 process x {devices} devices", "workdir": workdir, "exit": code,
            "wall_s": round(time.time() - t0, 1)}


def two_processes(args, name):
    workdir = os.path.join(args.out, name)
    shutil.rmtree(workdir, ignore_errors=True)
    port = _port()
    t0 = time.time()
    procs = [_launch(args.config, workdir, 1, args.extra + _dist(port, i), f"{workdir}.p{i}.log")
             for i in range(2)]
    codes = _wait(procs, args.limit_s)
    return {"run": "2 processes x 1 device", "workdir": workdir, "exit": codes,
            "hung": any(c is None for c in codes), "wall_s": round(time.time() - t0, 1)}


def killed_and_resumed(args):
    workdir = os.path.join(args.out, "two_processes_killed")
    shutil.rmtree(workdir, ignore_errors=True)
    port = _port()
    procs = [_launch(args.config, workdir, 1, args.extra + _dist(port, i), f"{workdir}.p{i}.log")
             for i in range(2)]
    saved = os.path.join(workdir, "checkpoints", "latest", str(args.kill_after))
    while not os.path.isdir(saved) and procs[1].poll() is None:
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGKILL)
    t_kill = time.time()
    code0 = _wait([procs[0]], args.limit_s)[0]
    alone_s = round(time.time() - t_kill, 1)
    procs[1].wait()
    port = _port()
    resumed = [_launch(args.config, workdir, 1, args.extra + _dist(port, i),
                       f"{workdir}.resumed.p{i}.log") for i in range(2)]
    codes = _wait(resumed, args.limit_s)
    return {"run": f"2 processes, process 1 killed after epoch {args.kill_after}, resumed",
            "workdir": workdir, "process_0_after_the_kill": {"exit": code0, "seconds": alone_s},
            "exit": codes, "hung": any(c is None for c in codes)}


def compare(run, reference):
    """Bitwise comparison of two runs' metrics.jsonl (and how each record appears)."""
    try:
        got, ref = _records(run["workdir"]), _records(reference["workdir"])
    except OSError as e:
        return dict(run, equal=False, why=str(e))
    keys = [(r["kind"], r["step"]) for r in got]
    return dict(run, records=len(got), duplicated_records=len(keys) - len(set(keys)),
                equal_to_1x2=got == ref)


def divergence(runs):
    """Per-step train loss and per-epoch val top-1 of the 1/2/4-device runs, side by side."""
    table = {}
    for run in runs:
        for r in _records(run["workdir"]):
            key = (r["kind"], r["step"], r.get("epoch"))
            value = r["loss"] if r["kind"] == "train" else r.get("val_top1")
            table.setdefault(key, {})[run["run"]] = value
    return [{"kind": k[0], "step": k[1], "epoch": k[2], **v} for k, v in sorted(table.items())]


def drift(args):
    """One epoch on 1, 2 and 4 devices, a train record per step; the relative difference of
    each step's loss from 1 device's."""
    extra = args.extra + ["--config.num_epochs=1", "--config.log_every_steps=1"]
    procs = {}
    for n in (1, 2, 4):
        workdir = os.path.join(args.out, f"drift_{n}dev")
        shutil.rmtree(workdir, ignore_errors=True)
        procs[n] = (workdir, _launch(args.config, workdir, n, extra, f"{workdir}.log"))
    _wait([p for _, p in procs.values()], args.limit_s)
    losses = {n: [r["loss"] for r in _records(w) if r["kind"] == "train"]
              for n, (w, _) in procs.items()}
    rows = [{"step": i + 1, **{f"{n} devices": losses[n][i] for n in losses},
             **{f"rel. diff {n} vs 1": abs(losses[n][i] - losses[1][i]) / abs(losses[1][i])
                for n in (2, 4)}} for i in range(len(losses[1]))]
    with open(os.path.join(args.out, "drift.json"), "w") as f:
        json.dump({"command": " ".join(sys.argv), "steps": rows}, f, indent=1)
    for row in rows:
        print(json.dumps(row))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.py")
    parser.add_argument("--out", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kill_after", type=int, default=3)
    parser.add_argument("--limit_s", type=float, default=3600)
    parser.add_argument("--drift_only", action="store_true")
    parser.add_argument("extra", nargs="*", help="--config.* overrides for every run")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.drift_only:
        return drift(args)
    out = {"command": " ".join(sys.argv), "config": args.config, "overrides": args.extra}
    devices = [one_process(args, n) for n in (1, 2, 4)]
    reference = devices[1]
    out["one_process"] = devices
    out["device_count"] = divergence(devices)
    out["two_processes"] = [compare(two_processes(args, f"two_processes_{i}"), reference)
                            for i in range(args.repeats)]
    out["killed"] = compare(killed_and_resumed(args), reference)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: out[k] for k in ("one_process", "two_processes", "killed")}, indent=1))


if __name__ == "__main__":
    main()
