"""One run per workdir: an exclusive lock held for the whole run, config.json made atomically.

`train.train_and_evaluate` calls `inspect` first (it only reads: a workdir that is a file, is
not writable, is locked by a live run, or holds a damaged config.json or the config of another
run that saved a checkpoint is refused in one line before the slow setup; a run that failed
before its first checkpoint may be started again with a corrected config, which replaces its
config.json), then, once everything is validated,
`RunLock`, which creates the folder, takes the lock and creates config.json:

* the lock is `fcntl.flock` on `<workdir>/run.lock`, taken without waiting: a second run on a
  locked workdir is refused at once, naming the lock file and the process that holds it. The
  kernel releases it when its process ends, however it ends (kill -9 included), so a stale
  lock file never blocks a resume;
* config.json is written whole to a temporary file, then hard-linked into place, which fails
  if the file appeared meanwhile: readers never see half a config, and two runs cannot both
  create it (it is then compared, under the lock, as on a resume).
"""
import errno
import fcntl
import json
import os
import socket
import stat
import sys

from mgr_jax import files
from mgr_jax.errors import UserError

LOCK_NAME = "run.lock"
CONFIG_NAME = "config.json"
# What a run writes in its workdir: none of it may be a symbolic link (a link would make the
# run write, append or truncate somewhere outside the workdir).
RUN_ENTRIES = (LOCK_NAME, CONFIG_NAME, "metrics.jsonl", "results.json", "tensorboard",
               "checkpoints")
# Fields that may change between a run and its resumption without changing its results.
RESUMABLE_CHANGES = ("num_epochs", "log_every_steps", "data.num_workers", "data.num_threads",
                     "data.prefetch_batches", "data.manual_dir", "data.prepared_dir",
                     "distributed.enabled", "distributed.coordinator_address",
                     "distributed.num_processes", "distributed.process_id",
                     "distributed.timeout_s", "model.remat")


def flatten(d, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Fields added after runs were already being saved, with the value that keeps the old
# behaviour: a saved config without one of them matches a config that has it at this value.
LATER_FIELDS = {"mps.finder_optimizer": "adam", "mps.finder_b1": 0.9, "mps.finder_b2": 0.999,
                "mps.normalize_hypergrad": False, "mps.finder_warmup_steps": 0,
                "mps.update_every": 1, "mps.log_meta_descent": False, "model.remat": False,
                "data.classes": (), "model.fresh_head": True}


def config_differences(saved, current, resumable=RESUMABLE_CHANGES):
    """Keys whose values differ between two config dicts (ignoring `resumable` ones, and
    `LATER_FIELDS` that the saved config predates and the current one has at their value)."""
    a, b = flatten(saved), flatten(current)
    keys = sorted(set(a) | set(b))

    def predates(k):
        return k not in a and k in LATER_FIELDS and json.dumps(b.get(k)) == json.dumps(
            LATER_FIELDS[k])
    return [k for k in keys if k not in resumable and not predates(k)
            and json.dumps(a.get(k)) != json.dumps(b.get(k))]


def read_config(workdir):
    """The config dict saved in `workdir`, None when there is none; UserError when damaged."""
    path = os.path.join(workdir, CONFIG_NAME)
    if not os.path.lexists(path):
        return None
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        reason = getattr(e, "strerror", None) or " ".join(str(e).split())
        raise UserError(f"{path} cannot be read ({reason}); it is not the config of a run "
                        "made here: use a new --workdir, or delete it if the run was "
                        "never started") from None
    if not isinstance(saved, dict):
        raise UserError(f"{path} holds a JSON {type(saved).__name__}, not a run's config; use a "
                        "new --workdir")
    return saved


def check_config(workdir, saved, config_dict, resumable=RESUMABLE_CHANGES):
    """UserError if the saved config differs from `config_dict` in a field that matters."""
    diff = config_differences(saved, config_dict, resumable)
    if diff:
        a, b = flatten(saved), flatten(config_dict)
        shown = ", ".join(f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in diff[:5])
        raise UserError(f"workdir {workdir} holds a run with a different config: {shown}; "
                        "use a new --workdir or the same config to resume")


def _check_path(workdir):
    """UserError when `workdir` (or the folder it would be made in) cannot hold a run."""
    if not workdir:
        raise UserError("--workdir is empty; give the folder the run should write to")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"workdir {workdir} is a file, not a folder; pass a new folder path "
                        "as --workdir")
    existing = workdir
    while not os.path.exists(existing):  # the nearest existing parent will hold the new folder
        parent = os.path.dirname(os.path.abspath(existing))
        if parent == os.path.abspath(existing):
            break
        existing = parent
    if not os.path.isdir(existing):
        raise UserError(f"workdir {workdir} cannot be created: {existing} is a file; pass "
                        "another --workdir")
    if not os.access(existing, os.W_OK | os.X_OK, effective_ids=os.access in
                     os.supports_effective_ids):
        what = f"workdir {existing}" if existing == workdir else \
            f"workdir {workdir} cannot be created: {existing}"
        raise UserError(f"{what} is not writable; pass a writable --workdir (or change its "
                        "permissions)")


def refuse_links(workdir):
    """UserError if an entry the run writes in `workdir` (or anything under its folders) is a
    symbolic link: the run never writes through one."""
    for name in RUN_ENTRIES:
        path = os.path.join(workdir, name)
        links = [path] if os.path.islink(path) else []
        if not links and os.path.isdir(path):
            for folder, dirs, names in os.walk(path):  # links to folders are not entered
                links += [os.path.join(folder, n) for n in dirs + names
                          if os.path.islink(os.path.join(folder, n))]
        if links:
            raise UserError(f"{links[0]} is a symbolic link; a run writes only files of its "
                            "own in its workdir: remove the link, or use a new --workdir")


def _holder(lock_path):
    """Who holds a lock, as its file says ("process 123 on host"), or a vague phrase."""
    try:
        with open(lock_path) as f:
            text = f.read().strip()
    except OSError:
        text = ""
    return f"process {text}" if text else "another process"


def _busy(workdir, lock_path):
    return UserError(f"workdir {workdir} is in use by another run ({_holder(lock_path)} holds "
                     f"{lock_path}); wait for it to finish or use another --workdir")


def _probe_lock(workdir):
    """UserError if a live run holds the workdir's lock (tested with a shared lock, let go at
    once: probes of runs starting together do not block one another)."""
    lock_path = os.path.join(workdir, LOCK_NAME)
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return  # no lock file (or unreadable: RunLock will say so)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(workdir, lock_path) from None
    except OSError:
        pass  # a file system without flock: RunLock decides.
    finally:
        os.close(fd)


def has_checkpoint(workdir):
    """Whether a run in `workdir` saved an epoch: only then does its config.json bind the
    workdir (a run that failed before its first checkpoint may be started with another)."""
    for which in ("latest", "best"):
        folder = os.path.join(workdir, "checkpoints", which)
        if os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder)):
            return True
    return False


def _check_saved(workdir, saved, config_dict, resumable):
    """True when config.json is to be replaced (another config, nothing saved yet);
    UserError when it differs from a run that saved an epoch."""
    if saved is None or not config_differences(saved, config_dict, resumable):
        return False
    if has_checkpoint(workdir):
        check_config(workdir, saved, config_dict, resumable)
    return True


def inspect(workdir, config_dict, resumable=RESUMABLE_CHANGES):
    """Refuse, reading only, a workdir this run cannot use (see the module docstring)."""
    _check_path(workdir)
    if os.path.isdir(workdir):
        refuse_links(workdir)
        _probe_lock(workdir)
        _check_saved(workdir, read_config(workdir), config_dict, resumable)


def _unwritable(workdir, e):
    return UserError(f"workdir {workdir} is not writable ({e.strerror}); pass a writable "
                     "--workdir")


def create_config(workdir, config_dict, resumable=RESUMABLE_CHANGES):
    """Create `workdir/config.json` atomically, or check the one there (a resume)."""
    path = os.path.join(workdir, CONFIG_NAME)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        if os.path.lexists(tmp):
            os.remove(tmp)  # left by a killed process with our pid; never followed
        with files.open_new(tmp) as f:
            json.dump(config_dict, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if the file exists: created exactly once.
        except FileExistsError:
            if _check_saved(workdir, read_config(workdir), config_dict, resumable):
                os.replace(tmp, path)  # under the lock; the earlier run saved nothing
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            saved = read_config(workdir)  # no hard links here: the lock keeps this safe.
            if saved is None or _check_saved(workdir, saved, config_dict, resumable):
                os.replace(tmp, path)
    except PermissionError as e:
        raise _unwritable(workdir, e) from None
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


class RunLock:
    """Context manager: create the workdir, hold its lock, create or check config.json.

    `enabled=False` (the non-zero processes of a multi-host run, which share the workdir of
    process 0) skips the lock and the config write.
    """

    def __init__(self, workdir, config_dict, enabled=True, resumable=RESUMABLE_CHANGES):
        self.workdir, self.config_dict, self.enabled = workdir, config_dict, enabled
        self.resumable, self.fd = resumable, None
        self.path = os.path.join(workdir, LOCK_NAME)

    def __enter__(self):
        if not self.enabled:
            return self
        _check_path(self.workdir)
        if os.path.isdir(self.workdir):
            refuse_links(self.workdir)
        try:
            os.makedirs(self.workdir, exist_ok=True)
            # O_NOFOLLOW: a link planted after the check is refused (ELOOP), never followed
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            if not stat.S_ISREG(os.fstat(self.fd).st_mode):
                os.close(self.fd)
                self.fd = None
                raise UserError(f"{self.path} is not a regular file; remove it, or use a new "
                                "--workdir")
        except PermissionError as e:
            raise _unwritable(self.workdir, e) from None
        except OSError as e:
            if e.errno == errno.EROFS:
                raise _unwritable(self.workdir, e) from None
            if e.errno == errno.ELOOP:
                raise UserError(f"{self.path} is a symbolic link; remove it, or use a new "
                                "--workdir") from None
            raise UserError(f"workdir {self.workdir} cannot be used ({e.strerror}); pass "
                            "another --workdir") from None
        try:
            self._lock()
            create_config(self.workdir, self.config_dict, self.resumable)
        except BaseException:
            self.release()
            raise
        return self

    def _lock(self):
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(self.workdir, self.path) from None
        except OSError as e:  # a file system without locks (some network mounts)
            print(f"warning: cannot lock {self.path} ({e.strerror}); nothing stops a second "
                  "run on this workdir but config.json's atomic creation", file=sys.stderr,
                  flush=True)
            return
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())

    def release(self):
        """Drop the lock (the file stays: removing it would race with a new run's open)."""
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)  # closing the descriptor releases the flock.
            self.fd = None

    def __exit__(self, *exc):
        self.release()
        return False
