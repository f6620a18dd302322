"""The run grid of an experiment command: configs -> named `Job`s -> trained (or found) runs.

A command expands a base config into `Job`s: one training run each (config overrides and a
seed) plus the table cell (row, column) it feeds. `run_jobs` trains the jobs whose run
directory has no `results.json` yet through `train.train_and_evaluate` (a half-done run resumes
there; a finished one is skipped; a run whose loss became NaN/inf gets a `diverged.json`).

Run directories are named from their settings: `<dataset>-<method>-s<seed>[-<field>=<value>...]-
<hash>`, the fields being those that differ from the command's base config and the hash that of
the whole config. Identical runs therefore share one directory, also across commands given the
same `--runs_dir` (e.g. Table 5's PCR and MGR rows are Table 1's), and a directory never holds
a run of another config.
"""
import dataclasses
import hashlib
import json
import math
import os
import re
from typing import Any, Dict, Optional, Sequence

import ml_collections

from mgr_jax import regularisers
from mgr_jax.errors import TrainingDiverged
from mgr_jax.files import read_json, write_json
from mgr_jax.run import checkpoints, config_lib, train
from mgr_jax.run.workdir import LATER_FIELDS

# The paper's methods that sample latents with MPS, in config_lib.METHODS order, and each
# one's uniform-sampling twin with the same regulariser (gda_mps -> gda).
MPS_METHODS = tuple(m for m in config_lib.METHODS if config_lib.is_mps(m))
UNIFORM_OF = {m: regularisers.method_table()[m][0].uniform for m in MPS_METHODS}
# Config fields that say where the data is and how it is loaded or logged, not what a run
# computes (batches are a function of the step alone): left out of run names and hashes, so a
# finished run is found again on a machine with other paths or worker counts.
NOT_IN_NAME = ("log_every_steps", "data.manual_dir", "data.prepared_dir", "data.num_workers",
               "data.num_threads", "data.prefetch_batches", "distributed.")


def _in_name(key):
    return not any(key == k or (k.endswith(".") and key.startswith(k)) for k in NOT_IN_NAME)


# ----------------------------------------------------------------------------- configs

def flatten(d, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1} (a ConfigDict is taken as its JSON dict)."""
    if isinstance(d, ml_collections.ConfigDict):
        d = config_lib.to_dict(d)
    return checkpoints.flatten(d, prefix)


def get_lambda(config):
    """The paper's lambda (the config field `lambda_`)."""
    return float(config.lambda_)


def derive(base, overrides=None, seed=None, lambda_map=None):
    """A copy of `base` with dotted-key `overrides` and `seed` set.

    The key "lambda" means the config's `lambda_` (`--config.lambda` is refused by the flag
    parser, a Python keyword). `lambda_map` ({method: lambda}, e.g. sweep_lambda's choice) sets
    lambda for the run's method unless the overrides set it themselves.
    """
    config = base.copy_and_resolve_references()
    overrides = dict(overrides or {})
    if "lambda" in overrides:
        overrides["lambda_"] = overrides.pop("lambda")
    if seed is not None:
        overrides["seed"] = int(seed)
    method = overrides.get("method", base.method)
    if lambda_map and method in lambda_map and "lambda_" not in overrides:
        overrides["lambda_"] = float(lambda_map[method])
    config.update_from_flattened_dict(overrides)
    return config


def config_hash(config):
    """Ten hex digits identifying everything in `config` that can change a run's results."""
    flat = {k: v for k, v in flatten(config).items() if _in_name(k) and not (
        k in LATER_FIELDS and json.dumps(v) == json.dumps(LATER_FIELDS[k]))}  # older runs' hash
    return hashlib.sha1(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:10]


def _short(value):
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(_short(v) for v in value)
    return str(value)


def run_name(base, config):
    """`<dataset>-<method>-s<seed>[-key=value...]-<hash>`: the fields that differ from `base`."""
    a, b = flatten(base), flatten(config)
    diffs = [f"{k}={_short(b[k])}" for k in sorted(b)
             if k not in ("method", "seed") and _in_name(k)
             and json.dumps(a.get(k)) != json.dumps(b[k])]
    stem = "-".join([str(config.data.name), str(config.method), f"s{config.seed}"] + diffs)
    stem = re.sub(r"[^A-Za-z0-9._=+,-]", "_", stem)[:150]
    return f"{stem}-{config_hash(config)}"


# ----------------------------------------------------------------------------- jobs

@dataclasses.dataclass(eq=False)
class Job:
    """One training run and the table cell (row, column) it feeds."""
    config: ml_collections.ConfigDict
    name: str
    row: str = ""
    column: str = ""
    status: str = "pending"  # done (found finished), ran, diverged, planned (dry run)
    result: Optional[Dict[str, Any]] = None
    workdir: str = ""

    @property
    def seed(self):
        return int(self.config.seed)

    def value(self, key):
        """A number from results.json (NaN when the run has none, e.g. it diverged)."""
        if self.result is None or self.result.get(key) is None:
            return math.nan
        return float(self.result[key])


def make_job(base, overrides=None, seed=None, *, row="", column="", lambda_map=None):
    config = derive(base, overrides, seed, lambda_map)
    return Job(config=config, name=run_name(base, config), row=row, column=column)


def runs_dir_of(workdir, runs_dir):
    """The command's run directory: `runs_dir`, or `<workdir>/runs`."""
    return runs_dir or os.path.join(workdir, "runs")


def mark_diverged(workdir, error):
    """Record a TrainingDiverged in `workdir`/diverged.json (later calls skip the run)."""
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, "diverged.json"), {"step": int(error.args[0])})


# ----------------------------------------------------------------------------- running

def run_one(config, workdir, trainer=None):
    """(status, results) of one run: skipped if finished, otherwise trained (or resumed).

    `trainer(config, workdir)` defaults to train.train_and_evaluate (tests pass fakes).
    """
    done = read_json(os.path.join(workdir, "results.json"))
    if done is not None:
        return "done", done
    if read_json(os.path.join(workdir, "diverged.json")) is not None:
        return "diverged", None
    trainer = trainer or train.train_and_evaluate
    try:
        result = trainer(config, workdir)
    except TrainingDiverged as e:
        mark_diverged(workdir, e)
        print(f"  {workdir}: the loss became NaN/inf at step {e.args[0]}; counted as failed "
              "(delete diverged.json to retry)", flush=True)
        return "diverged", None
    if result is None:  # a trainer that paused; the next call resumes it.
        return "paused", None
    return "ran", result


def run_jobs(jobs: Sequence[Job], runs_dir, trainer=None, dry_run=False, log=print):
    """Run every job (each distinct run once, in order); fills job.status/result/workdir."""
    if not dry_run:
        os.makedirs(runs_dir, exist_ok=True)
    by_name = {}
    for job in jobs:
        by_name.setdefault(job.name, job)
    distinct = list(by_name.values())
    for i, job in enumerate(distinct, 1):
        job.workdir = os.path.join(runs_dir, job.name)
        finished = os.path.exists(os.path.join(job.workdir, "results.json"))
        if dry_run:
            job.status = "done" if finished else "planned"
            job.result = read_json(os.path.join(job.workdir, "results.json"))
        else:
            log(f"[{i}/{len(distinct)}] {'skip (finished)' if finished else 'run'} {job.name}",
                flush=True)
            job.status, job.result = run_one(job.config, job.workdir, trainer)
    for job in jobs:  # duplicates share the first job's outcome
        first = by_name[job.name]
        job.workdir, job.status, job.result = first.workdir, first.status, first.result
    return jobs


def print_plan(jobs, log=print):
    seen = set()
    for job in jobs:
        if job.name in seen:
            continue
        seen.add(job.name)
        log(f"  {job.status:8s} {job.name}  [{job.row} | {job.column}]")


def execute(jobs, workdir, runs_dir, trainer, dry_run, title=""):
    """Run (or, dry, list) the jobs; True when results can be tabulated."""
    runs_dir = runs_dir_of(workdir, runs_dir)
    if title:
        print(f"{title}: {len({j.name for j in jobs})} runs in {runs_dir}", flush=True)
    run_jobs(jobs, runs_dir, trainer=trainer, dry_run=dry_run)
    if dry_run:
        print_plan(jobs)
    return not dry_run


def read_metrics(workdir, kind="epoch"):
    """Records of metrics.jsonl of one kind ("epoch" or "train"), in file order."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if r.get("kind") == kind]
