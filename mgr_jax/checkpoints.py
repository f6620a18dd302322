"""Run directory bookkeeping: orbax checkpoints (latest + best) and the saved config.

A checkpoint holds the whole train state and the loop's own state (epoch, best epoch,
accuracies, elapsed time) as JSON, so a resumed run continues exactly where it stopped.
"""
import json
import os

import orbax.checkpoint as ocp

from mgr_jax import files
from mgr_jax.errors import UserError

# Fields that may change between a run and its resumption without changing its results.
RESUMABLE_CHANGES = ("num_epochs", "log_every_steps", "data.num_workers", "data.num_threads",
                     "data.prefetch_batches", "data.manual_dir", "data.prepared_dir",
                     "distributed.enabled", "distributed.coordinator_address",
                     "distributed.num_processes", "distributed.process_id")


def flatten(d, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved, current):
    """Keys whose values differ between two config dicts (ignoring RESUMABLE_CHANGES)."""
    a, b = flatten(saved), flatten(current)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in RESUMABLE_CHANGES
            and json.dumps(a.get(k)) != json.dumps(b.get(k))]


def check_workdir_config(workdir, config_dict):
    """Raise UserError if `workdir` holds a run made with a different config."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = json.load(f)
    diff = config_differences(saved, config_dict)
    if diff:
        shown = ", ".join(f"{k} ({flatten(saved).get(k)!r} -> {flatten(config_dict).get(k)!r})"
                          for k in diff[:5])
        raise UserError(f"workdir {workdir} holds a run with a different config: {shown}; "
                        "use a new --workdir or the same config to resume")


def write_config(workdir, config_dict):
    os.makedirs(workdir, exist_ok=True)
    files.write_json(os.path.join(workdir, "config.json"), config_dict, sort_keys=True)


class RunCheckpoints:
    """Latest-epoch and best-validation checkpoints under `workdir/checkpoints/`."""

    def __init__(self, workdir, keep_best=True):
        root = os.path.join(os.path.abspath(workdir), "checkpoints")
        opts = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
        self.latest = ocp.CheckpointManager(os.path.join(root, "latest"), options=opts)
        self.best = ocp.CheckpointManager(os.path.join(root, "best"), options=opts) \
            if keep_best else None

    def save(self, epoch, state, loop, is_best):
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  loop=ocp.args.JsonSave(loop))
        self.latest.save(epoch, args=args)
        if is_best and self.best is not None:
            self.best.save(epoch, args=args)

    def restore_latest(self, abstract_state, which="latest"):
        """(state, loop) of the latest (or best) epoch, or None when there is no checkpoint."""
        manager = self.latest if which == "latest" else self.best
        step = manager.latest_step()
        if step is None:
            return None
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), loop=ocp.args.JsonRestore()))
        return restored["state"], restored["loop"]

    def close(self):
        self.latest.wait_until_finished()
        self.latest.close()
        if self.best is not None:
            self.best.wait_until_finished()
            self.best.close()
