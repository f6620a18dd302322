"""Run directory bookkeeping: orbax checkpoints (latest + best) and the saved config.

A checkpoint holds the whole train state and the loop's own state (epoch, best epoch,
accuracies, elapsed time) as JSON, so a resumed run continues exactly where it stopped.
A damaged checkpoint is never a traceback: `RunCheckpoints.resume` reports it in one line,
moves it to `checkpoints/damaged/` and resumes from the newest good one (the best-validation
checkpoint or an earlier epoch), or says that there is none. config.json and the workdir's
lock are `mgr_jax.workdir`'s.

With several processes (a multi-host run) every process calls the same methods: orbax saves
collectively, the two managers have barriers of their own names (they save the same step back
to back), every process agrees on whether a checkpoint restored (`multihost.all_ok`), and
process 0 alone moves a damaged one aside while the others wait for it.
"""
import io
import logging
import os
import sys
import threading

import orbax.checkpoint as ocp

from mgr_jax import files
from mgr_jax.errors import UserError
from mgr_jax.run import multihost, workdir as workdir_lib

# Fields that may change between a run and its resumption without changing its results.
RESUMABLE_CHANGES = workdir_lib.RESUMABLE_CHANGES
flatten = workdir_lib.flatten
config_differences = workdir_lib.config_differences


def check_workdir_config(workdir, config_dict):
    """Raise UserError if `workdir` holds a run made with a different config (or a damaged
    config.json)."""
    saved = workdir_lib.read_config(workdir)
    if saved is not None:
        workdir_lib.check_config(workdir, saved, config_dict)


def write_config(workdir, config_dict):
    """config.json of a run (replaced atomically); runs of `train` use `workdir.RunLock`."""
    os.makedirs(workdir, exist_ok=True)
    files.write_json(os.path.join(workdir, "config.json"), config_dict, sort_keys=True)


class _WithoutClosedLoopTracebacks(io.TextIOBase):
    """sys.stderr less the tracebacks that end in 'RuntimeError: Event loop is closed'.

    When orbax fails to restore a damaged checkpoint, tensorstore still completes the reads
    under way and calls back into orbax's asyncio loop, closed by then; each callback prints
    such a traceback through sys.stderr, for a while after (hundreds of them, seen here). They
    concern the checkpoint already reported in one line, so they are dropped; every other write
    passes through unchanged. A traceback is held until its exception line, per thread (the
    callbacks print from several threads at once).
    """

    def __init__(self, inner):
        super().__init__()
        self.inner, self.held = inner, {}

    def write(self, text):
        thread = threading.get_ident()
        held = self.held.get(thread)
        if held is None and not text.startswith("Traceback (most recent call last)"):
            return self.inner.write(text)
        held = (held or "") + text
        last = held.splitlines(keepends=True)[-1]
        # a traceback ends at its exception line (unindented, after the frames)
        if last.endswith("\n") and not last.startswith((" ", "Traceback")):
            self.held.pop(thread, None)
            if last.strip() != "RuntimeError: Event loop is closed":
                self.inner.write(held)
        else:
            self.held[thread] = held
        return len(text)

    def flush(self):  # a traceback being held stays held: it is still being written
        self.inner.flush()

    def __getattr__(self, name):  # fileno, encoding, isatty, ...: the real stream's
        return getattr(self.inner, name)


def _quiet_failed_restores():
    """Keep a damaged checkpoint to its one line: the closed-loop tracebacks are dropped from
    sys.stderr, and asyncio's "Task exception was never retrieved" log records (the failed
    restore's other reads, logged when collected) are not shown; mgr-jax uses no asyncio of its
    own, and orbax's save errors reach `wait`."""
    if not isinstance(sys.stderr, _WithoutClosedLoopTracebacks):
        sys.stderr = _WithoutClosedLoopTracebacks(sys.stderr)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def _reason(e):
    """A library exception as a short phrase on one line."""
    text = " ".join(str(e).split()) or type(e).__name__
    text = f"{type(e).__name__}: {text}" if type(e).__name__ not in text else text
    return text if len(text) <= 120 else text[:117] + "..."


class RunCheckpoints:
    """Latest-epoch and best-validation checkpoints under `workdir/checkpoints/`."""

    def __init__(self, workdir, keep_best=True):
        self.root = os.path.join(os.path.abspath(workdir), "checkpoints")
        self._pending = None  # the epoch being saved
        self.latest = self._open("latest")
        self.best = self._open("best") if keep_best else None

    def _open(self, which):
        opts = ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True,
            # distinct barrier names: the two managers save the same step back to back, and
            # shared names hang a multi-process run.
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=f"mgr_jax_{which}"))
        return ocp.CheckpointManager(os.path.join(self.root, which), options=opts)

    def save(self, epoch, state, loop, is_best):
        """Start saving an epoch (asynchronously); UserError, one line, when the previous save
        failed (a full disk, say): the run stops instead of training on unsaved."""
        self.wait()
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  loop=ocp.args.JsonSave(loop))
        self._pending = epoch
        self._guard(lambda: self.latest.save(epoch, args=args))
        if is_best and self.best is not None:
            self._guard(lambda: self.best.save(epoch, args=args))

    def _guard(self, call):
        try:
            call()
        except Exception as e:  # noqa: BLE001 (orbax / tensorstore / the OS raise many kinds)
            epoch, self._pending = self._pending, None
            raise UserError(f"saving the checkpoint of epoch {epoch} in {self.root} failed "
                            f"({_reason(e)}); the checkpoints saved before it are kept: free "
                            "space (or fix the folder) and run the same command to resume"
                            ) from None

    def wait(self):
        """Wait for the saves under way; UserError (one line) if one of them failed."""
        for manager in (self.latest, self.best):
            if manager is not None:
                self._guard(manager.wait_until_finished)
        self._pending = None

    def _manager(self, which):
        return self.latest if which == "latest" else self.best

    def _restore(self, manager, step, abstract_state):
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), loop=ocp.args.JsonRestore()))
        return restored["state"], restored["loop"]

    def restore_latest(self, abstract_state, which="latest"):
        """(state, loop) of the latest (or best) epoch, or None when there is no checkpoint;
        UserError (one line) when that checkpoint is damaged."""
        manager = self._manager(which)
        step = None if manager is None else manager.latest_step()
        if step is None:
            return None
        try:
            return self._restore(manager, step, abstract_state)
        except Exception as e:  # noqa: BLE001 (orbax / tensorstore raise many kinds)
            raise UserError(f"checkpoint {self.path(which, step)} is damaged ({_reason(e)})"
                            ) from None

    def path(self, which, step):
        return os.path.join(self.root, which, str(step))

    def _candidates(self):
        """(which, step) of every checkpoint on disk, newest epoch first (latest before best)."""
        found = []
        for order, which in enumerate(("latest", "best")):
            manager = self._manager(which)
            if manager is not None:
                found += [(-int(step), order, which) for step in manager.all_steps()]
        return [(which, -neg) for neg, _, which in sorted(found)]

    def resume(self, abstract_state, report=print):
        """(state, loop, (which, step)) of the newest good checkpoint, or None when there is
        no checkpoint at all.

        Damaged checkpoints newer than it are reported (one line each, through `report`) and
        moved to `checkpoints/damaged/`; when no checkpoint is good, UserError says so and
        nothing is moved.
        """
        damaged = []
        candidates = self._candidates()
        if candidates:
            _quiet_failed_restores()  # before: some come while the restore is failing
        for which, step in candidates:
            why = None
            try:
                state, loop = self._restore(self._manager(which), step, abstract_state)
            except Exception as e:  # noqa: BLE001 (orbax / tensorstore raise many kinds)
                why = _reason(e)
            failed = multihost.all_ok(why is None)
            if failed:
                damaged.append((which, step, why or f"it did not restore on process(es) "
                                                   f"{failed}"))
                continue
            for bad_which, bad_step, why in damaged:
                if multihost.is_primary():
                    moved = self._set_aside(bad_which, bad_step)
                    report(f"warning: checkpoint {self.path(bad_which, bad_step)} is damaged "
                           f"({why}); moved to {moved}; resuming from {self.path(which, step)} "
                           f"(epoch {loop['epoch']})")
            if damaged:
                multihost.barrier("mgr_jax_damaged_moved")
                for manager in {self._manager(w) for w, _, _ in damaged}:
                    manager.reload()
            return state, loop, (which, step)
        if damaged:
            which, step, why = damaged[0]
            raise UserError(f"checkpoint {self.path(which, step)} is damaged ({why}) and there "
                            f"is no other good checkpoint in {self.root}; delete {self.root} to "
                            "train this run again from the start, or use a new --workdir")
        return None

    def _set_aside(self, which, step):
        """Move a damaged checkpoint out of its manager's folder; returns where it went."""
        target = os.path.join(self.root, "damaged", f"{which}_{step}")
        n = 1
        while os.path.exists(target):
            target = os.path.join(self.root, "damaged", f"{which}_{step}.{n}")
            n += 1
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(self.path(which, step), target)
        return target

    def close(self):
        """Wait for the saves under way (UserError if one failed), then close the managers."""
        try:
            self.wait()
        finally:
            for manager in (self.latest, self.best):
                if manager is not None:
                    try:
                        manager.close()
                    except Exception:  # noqa: BLE001 (the save's failure is already said)
                        pass
