"""Several processes as one job: joining, checking that they agree, and who writes what.

A multi-host run is the same command on every host (`--config.distributed.*`, README
"Scaling"). Before `jax.distributed.initialize`, whose failures are C++ aborts after minutes,
`initialize` makes the mistakes people make with clusters one line each:

* with `distributed.coordinator_address`, process 0 first listens on that address itself (a
  port in use is refused at once) and the others connect to it (retrying while process 0
  starts); every process sends its *fingerprint*: its config (less the fields that may
  differ per host), its workdir, `--max_epochs_this_run` and a hash of the mgr_jax source.
  Process 0 compares them and answers every process with the same verdict, so a different
  `optimizer.lr`, seed or batch size is refused on every host naming the fields. Process 0
  then frees the port and starts JAX's coordination service on it. A process that does not
  come within `distributed.timeout_s` is reported by number;
* without it (SLURM, TPU pods: JAX finds the cluster), the fingerprints are compared through
  JAX's key-value store after joining.

During the run the processes agree through small collectives: `all_ok` (did every process
get through a phase without an error? a failed process says why on its own console, the
others name it) and `barrier`. Only process 0 (`is_primary`) writes the workdir's files
besides the checkpoints, which orbax writes collectively.
"""
import contextlib
import hashlib
import json
import os
import socket
import sys
import time

import jax
import numpy as np
from jax._src import distributed as jax_distributed  # the key-value store has no public name
from jax.experimental import multihost_utils

from mgr_jax.errors import UserError
from mgr_jax.run.workdir import flatten

MAGIC = "mgr_jax rendezvous 1"
# Fields that may differ between the processes of one job (host-local settings).
PER_HOST_FIELDS = ("distributed.process_id", "data.num_workers", "data.num_threads",
                   "data.prefetch_batches", "data.manual_dir", "data.prepared_dir")
_MAX_MESSAGE = 1 << 20


def is_primary():
    return jax.process_index() == 0


def source_hash():
    """sha256 (16 hex digits) of the mgr_jax package's Python sources: the code version."""
    root = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for folder, dirs, names in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(n for n in names if n.endswith(".py")):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(f.read() + b"\0")
    return digest.hexdigest()[:16]


def fingerprint(config_dict, workdir, max_epochs_this_run=None):
    """What must be equal on every process of a job, as a flat JSON-able dict."""
    fields = {k: v for k, v in flatten(config_dict).items() if k not in PER_HOST_FIELDS}
    fields.update({"--workdir": os.path.normpath(workdir or ""),
                   "--max_epochs_this_run": max_epochs_this_run, "mgr_jax source": source_hash()})
    return json.loads(json.dumps(fields))  # tuples -> lists, as they travel


def differences(reference, others):
    """A one-line description of how `others` ({process id: fingerprint}) differ from process
    0's `reference`, or None when all agree."""
    shown = []
    for pid in sorted(others):
        theirs = others[pid]
        keys = sorted(k for k in set(reference) | set(theirs)
                      if json.dumps(reference.get(k)) != json.dumps(theirs.get(k)))
        shown += [f"process {pid} has {k}={theirs.get(k)!r} where process 0 has "
                  f"{reference.get(k)!r}" for k in keys]
    if not shown:
        return None
    more = f" (and {len(shown) - 4} more)" if len(shown) > 4 else ""
    return (f"the processes of this job disagree: {'; '.join(shown[:4])}{more}; start every "
            "process with the same command, config and code")


def _split_address(address):
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
        raise UserError(f"distributed.coordinator_address={address!r} must be host:port, e.g. "
                        "10.0.0.1:8476")
    return host.strip("[]"), int(port)


def _send(conn, message):
    conn.sendall(json.dumps(message).encode() + b"\n")


def _receive(conn, deadline):
    """One JSON object line from `conn`, or None (closed, timed out, too long, not ours)."""
    data = b""
    while b"\n" not in data and len(data) < _MAX_MESSAGE:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        conn.settimeout(remaining)
        try:
            chunk = conn.recv(65536)
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    try:
        message = json.loads(data.split(b"\n", 1)[0])
    except (UnicodeDecodeError, ValueError):
        return None
    return message if isinstance(message, dict) else None


def _say(line):
    print(line, file=sys.stderr, flush=True)


def _serve(host, port, num_processes, own, timeout_s):
    """Process 0's side: collect every other process's hello, answer all with one verdict."""
    address = f"{host}:{port}"
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise UserError(f"distributed.coordinator_address={address}: {e.strerror}") from None
    server = socket.socket(info[0], socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    peers = {}
    try:
        try:
            server.bind(info[4])
        except OSError as e:
            raise UserError(f"cannot listen on distributed.coordinator_address={address} "
                            f"({e.strerror}): the port is taken, maybe by another job; choose "
                            "a free port for every process of this job") from None
        server.listen(num_processes)
        deadline = time.monotonic() + timeout_s
        _say(f"waiting for {num_processes - 1} more process(es) to join at {address} "
             f"(up to {timeout_s} s: distributed.timeout_s)")
        verdict = None
        while len(peers) < num_processes - 1 and verdict is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(1, num_processes)) - set(peers))
                verdict = (f"process(es) {missing} of {num_processes} did not join at "
                           f"{address} within {timeout_s} s (distributed.timeout_s); start "
                           "every process with the same coordinator address")
                break
            server.settimeout(remaining)
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            hello = _receive(conn, time.monotonic() + min(10.0, remaining))
            if hello is None or hello.get("magic") != MAGIC:
                conn.close()  # not one of ours (a port scanner, another job): ignored
                continue
            pid = hello.get("process_id")
            if not isinstance(pid, int) or not 0 < pid < num_processes or pid in peers:
                verdict = (f"two processes say distributed.process_id={pid!r}, or it is not "
                           f"in 1..{num_processes - 1}; give each process its own id")
                conn.close()
                break
            peers[pid] = (conn, hello.get("fingerprint") or {})
            verdict = differences(own, {pid: peers[pid][1]})
        for conn, _ in peers.values():
            with contextlib.suppress(OSError):
                _send(conn, {"magic": MAGIC, "error": verdict})
    finally:
        for conn, _ in peers.values():
            conn.close()
        server.close()
    if verdict is not None:
        raise UserError(verdict)


def _join(host, port, process_id, own, timeout_s):
    """A non-zero process's side: reach process 0 (retrying), send the hello, get the verdict."""
    address = f"{host}:{port}"
    deadline = time.monotonic() + timeout_s
    said = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UserError(f"process 0 did not answer at {address} within {timeout_s} s "
                            "(distributed.timeout_s); start it, or check the coordinator "
                            "address and that its port is reachable")
        try:
            conn = socket.create_connection((host, port), timeout=min(remaining, 5.0))
        except OSError:
            if not said:
                _say(f"waiting for process 0 at {address} (up to {timeout_s} s: "
                     "distributed.timeout_s)")
                said = True
            time.sleep(min(0.2, max(remaining, 0)))
            continue
        with conn:
            try:
                _send(conn, {"magic": MAGIC, "process_id": process_id, "fingerprint": own})
            except OSError:
                time.sleep(0.2)
                continue
            reply = _receive(conn, deadline)
        if reply is None or reply.get("magic") != MAGIC:
            raise UserError(f"something other than process 0 of this job answers at "
                            f"{address} (another job on that port?); choose a free port "
                            "for every process of this job")
        if reply.get("error"):
            raise UserError(reply["error"])
        return


def _compare_through_jax(own, timeout_s):
    """Fingerprints compared after a cluster-detected join, through JAX's key-value store."""
    client = jax_distributed.global_state.client
    pid, count = jax.process_index(), jax.process_count()
    client.key_value_set(f"mgr_jax/fingerprint/{pid}", json.dumps(own))
    prints = {p: json.loads(client.blocking_key_value_get(f"mgr_jax/fingerprint/{p}",
                                                           int(timeout_s * 1000)))
              for p in range(count)}
    verdict = differences(prints[0], {p: f for p, f in prints.items() if p})
    if verdict is not None:
        raise UserError(verdict)


def initialize(config, own_fingerprint):
    """Join the job the config describes (nothing when `distributed.enabled` is False)."""
    dist = config.get("distributed")
    if dist is None or not dist.enabled:
        return
    timeout_s = int(dist.get("timeout_s", 300))
    # CPU processes talk through gloo (jax's default from 0.5.1 on; said here, not assumed)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if not dist.coordinator_address:
        jax.distributed.initialize(initialization_timeout=timeout_s)  # SLURM / TPU / env
        if jax.process_count() > 1:
            _compare_through_jax(own_fingerprint, timeout_s)
        return
    host, port = _split_address(dist.coordinator_address)
    if dist.num_processes > 1:
        if dist.process_id == 0:
            _serve(host, port, dist.num_processes, own_fingerprint, timeout_s)
        else:
            _join(host, port, dist.process_id, own_fingerprint, timeout_s)
    jax.distributed.initialize(
        coordinator_address=dist.coordinator_address, num_processes=dist.num_processes,
        process_id=dist.process_id, initialization_timeout=timeout_s,
        coordinator_bind_address=dist.coordinator_address)


def all_ok(ok):
    """Ids of the processes for which `ok` is False (a collective: every process calls it)."""
    if jax.process_count() == 1:
        return [] if ok else [0]
    flags = np.asarray(multihost_utils.process_allgather(np.asarray([int(bool(ok))], np.int32)))
    return [int(p) for p in np.flatnonzero(flags.reshape(-1) == 0)]


@contextlib.contextmanager
def together(phase):
    """Run a phase on every process; if it fails on some, it fails on all.

    The process that failed raises its own error; the others raise a UserError naming it,
    instead of waiting for it in the next collective until the heartbeat times out.
    """
    if jax.process_count() == 1:
        yield
        return
    try:
        yield
    except Exception:
        all_ok(False)
        raise
    failed = all_ok(True)
    if failed:
        raise UserError(f"process(es) {failed} stopped during {phase} (their own console "
                        "says why); this process stops too")


def barrier(name):
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
