"""What every experiment command shares: the run grid, mean ± std aggregation, tables, flags.

A command expands a base config into `Job`s: one training run each (config overrides and a
seed) plus the table cell it feeds. `run_jobs` trains the jobs whose run directory has no
`results.json` yet through `train.train_and_evaluate` (a half-done run resumes there; a
finished one is skipped), and `Table` turns per-seed numbers into mean ± std cells written as
Markdown (for people) and CSV (one line per cell, for programs).

Run directories are named from their settings: `<dataset>-<method>-s<seed>[-<field>=<value>...]-
<hash>`, the fields being those that differ from the command's base config and the hash that of
the whole config. Identical runs therefore share one directory, also across commands given the
same `--runs_dir` (e.g. Table 5's PCR and MGR rows are Table 1's), and a directory never holds
a run of another config.
"""
import csv
import dataclasses
import hashlib
import importlib.util
import io
import json
import math
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence

import ml_collections
import numpy as np

from mgr_jax import checkpoints, config_lib
from mgr_jax.errors import UserError

# Display names of the methods, as the paper's tables write them, in Table 1's row order.
METHOD_LABELS = {"base": "Base Model", "gda": "GDA", "gda_mh": "GDA+MH", "gda_ssl": "GDA+SSL",
                 "gda_mps": "GDA+MPS", "pcr": "PCR", "mgr": "MGR (PCR+MPS)"}
METHODS = tuple(METHOD_LABELS)
MPS_METHODS = ("gda_mps", "mgr")
# The uniform-sampling method whose synthetic loss an MPS method shares.
UNIFORM_OF = {"gda_mps": "gda", "mgr": "pcr"}
DATASET_LABELS = {"cars": "Cars", "aircraft": "Aircraft", "birds": "Birds", "dtd": "DTD",
                  "flowers": "Flower", "pets": "Pets", "digits": "Digits"}
# Config fields that say where the data is and how it is loaded or logged, not what a run
# computes (batches are a function of the step alone): left out of run names and hashes, so a
# finished run is found again on a machine with other paths or worker counts.
NOT_IN_NAME = ("log_every_steps", "data.manual_dir", "data.prepared_dir", "data.num_workers",
               "data.num_threads", "data.prefetch_batches", "distributed.")


def _in_name(key):
    return not any(key == k or (k.endswith(".") and key.startswith(k)) for k in NOT_IN_NAME)
RESULT_KEYS = ("test_top1", "val_top1", "best_epoch", "wall_clock_s", "steps_per_s")


# ----------------------------------------------------------------------------- configs

def flatten(d, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1} (a ConfigDict is taken as its JSON dict)."""
    if isinstance(d, ml_collections.ConfigDict):
        d = config_lib.to_dict(d)
    return checkpoints.flatten(d, prefix)


def lambda_key(config):
    """The config field of the paper's lambda: `lambda_` (`lambda` in older configs)."""
    return "lambda_" if "lambda_" in config else "lambda"


def get_lambda(config):
    return float(config[lambda_key(config)])


def derive(base, overrides=None, seed=None, lambda_map=None):
    """A copy of `base` with dotted-key `overrides` and `seed` set.

    The key "lambda" means the config's lambda field, whatever its name (`lambda_key`).
    `lambda_map` ({method: lambda}, e.g. sweep_lambda's choice) sets lambda for the run's
    method unless the overrides set it themselves.
    """
    config = base.copy_and_resolve_references()
    overrides = dict(overrides or {})
    key = lambda_key(base)
    if "lambda" in overrides and key != "lambda":
        overrides[key] = overrides.pop("lambda")
    if seed is not None:
        overrides["seed"] = int(seed)
    method = overrides.get("method", base.method)
    if lambda_map and method in lambda_map and key not in overrides:
        overrides[key] = float(lambda_map[method])
    config.update_from_flattened_dict(overrides)
    return config


def load_config_file(spec, overrides=None):
    """get_config() of a config file ("path.py" or "path.py:arg"), with flat `overrides`."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise UserError(f"config file {path} does not exist")
    name = "_mgr_experiment_config_" + re.sub(r"\W", "_", os.path.abspath(path))
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    if overrides:
        config.update_from_flattened_dict(dict(overrides))
    return config


def config_hash(config):
    """Ten hex digits identifying everything in `config` that can change a run's results."""
    flat = {k: v for k, v in flatten(config).items() if _in_name(k)}
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


# ----------------------------------------------------------------------------- runs

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


def read_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def default_trainer():
    from mgr_jax import train  # noqa: PLC0415 (jax only when something is trained)
    return train.train_and_evaluate


def run_one(config, workdir, trainer=None):
    """(status, results) of one run: skipped if finished, otherwise trained (or resumed)."""
    from mgr_jax import train  # noqa: PLC0415

    done = read_json(os.path.join(workdir, "results.json"))
    if done is not None:
        return "done", done
    if read_json(os.path.join(workdir, "diverged.json")) is not None:
        return "diverged", None
    trainer = trainer or default_trainer()
    try:
        result = trainer(config, workdir)
    except train.TrainingDiverged as e:
        os.makedirs(workdir, exist_ok=True)
        write_json(os.path.join(workdir, "diverged.json"), {"step": int(e.args[0])})
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


def read_metrics(workdir, kind="epoch"):
    """Records of metrics.jsonl of one kind ("epoch" or "train"), in file order."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if r.get("kind") == kind]


def write_runs_csv(path, jobs):
    """One line per distinct run: its cell, seed, status and results."""
    fields = ["name", "row", "column", "seed", "status", "method", "lambda"] + list(RESULT_KEYS)
    seen = set()
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for job in jobs:
            key = (job.name, job.row, job.column)
            if key in seen:
                continue
            seen.add(key)
            r = job.result or {}
            writer.writerow([job.name, job.row, job.column, job.seed, job.status,
                             job.config.method, get_lambda(job.config)]
                            + [r.get(k, "") for k in RESULT_KEYS])


# ----------------------------------------------------------------------------- statistics

def mean_std(values, ddof=1):
    """(mean, std, n) over the finite values; std is the sample standard deviation (ddof=1),
    NaN with fewer than two values."""
    v = np.asarray([float(x) for x in values if x is not None and np.isfinite(float(x))],
                   np.float64)
    if v.size == 0:
        return math.nan, math.nan, 0
    std = float(np.std(v, ddof=ddof)) if v.size > ddof else math.nan
    return float(np.mean(v)), std, int(v.size)


def format_cell(values, decimals=2):
    """"mean ± std" (just the mean for one value, "–" for none, a note on failed runs)."""
    mean, std, n = mean_std(values)
    if n == 0:
        return "–" if not values else "failed"
    text = f"{mean:.{decimals}f}" + (f" ± {std:.{decimals}f}" if n > 1 else "")
    failed = len(values) - n
    return text + (f" ({failed} failed)" if failed else "")


class Table:
    """Rows x columns of per-seed values; each cell reported as mean ± std over its values.

    `decimals` is an int or {column or (row, column): int} (2 for cells not named).
    `highlight="max"` or `"min"` bolds the best mean of each column in the Markdown and, with
    `baseline_row`, underlines the cells better than that row (the paper's Table 1 style).
    """

    def __init__(self, key, title, row_header, columns=(), decimals=2, highlight=None,
                 baseline_row=None, notes=()):
        self.key, self.title, self.row_header = key, title, row_header
        self.columns = list(columns)
        self.rows: List[str] = []
        self.cells: Dict[tuple, list] = {}
        self.decimals, self.highlight, self.baseline_row = decimals, highlight, baseline_row
        self.notes = list(notes)

    def add(self, row, column, values):
        """Set a cell to a list of per-seed values (NaN for a failed run)."""
        if row not in self.rows:
            self.rows.append(row)
        if column not in self.columns:
            self.columns.append(column)
        self.cells[(row, column)] = [float(v) for v in values]

    def stats(self, row, column):
        return mean_std(self.cells.get((row, column), []))

    def markdown(self):
        out = [f"### {self.title}", ""] if self.title else []
        out.append("| " + " | ".join([self.row_header] + self.columns) + " |")
        out.append("|" + "---|" * (len(self.columns) + 1))
        best = {}
        if self.highlight:
            pick = max if self.highlight == "max" else min
            for col in self.columns:
                means = [self.stats(r, col)[0] for r in self.rows]
                finite = [m for m in means if np.isfinite(m)]
                best[col] = pick(finite) if finite else None
        for row in self.rows:
            cells = []
            for col in self.columns:
                values = self.cells.get((row, col))
                if values is None:
                    cells.append("")
                    continue
                text = format_cell(values, self._decimals(row, col))
                mean = self.stats(row, col)[0]
                if self._beats_baseline(row, col, mean):
                    text = f"<u>{text}</u>"
                if best.get(col) is not None and mean == best[col]:
                    text = f"**{text}**"
                cells.append(text)
            out.append("| " + " | ".join([row] + cells) + " |")
        if self.notes:
            out.append("")
            out.extend(self.notes)
        return "\n".join(out) + "\n"

    def _decimals(self, row, col):
        if isinstance(self.decimals, dict):
            return self.decimals.get((row, col), self.decimals.get(col, 2))
        return self.decimals

    def _beats_baseline(self, row, col, mean):
        if not self.highlight or self.baseline_row is None or row == self.baseline_row:
            return False
        base = self.stats(self.baseline_row, col)[0]
        if not (np.isfinite(base) and np.isfinite(mean)):
            return False
        return mean > base if self.highlight == "max" else mean < base

    def csv_text(self):
        """CSV with one line per cell: row, column, mean, std, n, values (';'-separated)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["row", "column", "mean", "std", "n", "values"])
        for row in self.rows:
            for col in self.columns:
                values = self.cells.get((row, col))
                if values is None:
                    continue
                mean, std, n = mean_std(values)
                writer.writerow([row, col, _num(mean), _num(std), n,
                                 ";".join(_num(v) for v in values)])
        return buf.getvalue()


def _num(x):
    return "nan" if not np.isfinite(x) else f"{x:.6g}"


def read_table_csv(path):
    """{(row, column): {"mean", "std", "n", "values"}} of a CSV written by Table."""
    out = {}
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            out[(rec["row"], rec["column"])] = {
                "mean": float(rec["mean"]), "std": float(rec["std"]), "n": int(rec["n"]),
                "values": [float(v) for v in rec["values"].split(";") if v]}
    return out


def write_report(workdir, stem, tables, jobs=(), header="", footer=""):
    """`<stem>.md` (all tables), `<table.key>.csv` per table, `<stem>_runs.csv`; the paths."""
    os.makedirs(workdir, exist_ok=True)
    md = [f"# {header}\n" if header else ""]
    md += [t.markdown() for t in tables]
    if footer:
        md.append(footer)
    paths = {"markdown": os.path.join(workdir, f"{stem}.md")}
    with open(paths["markdown"], "w") as f:
        f.write("\n".join(m for m in md if m))
    for t in tables:
        paths[t.key] = os.path.join(workdir, f"{t.key}.csv")
        with open(paths[t.key], "w", newline="") as f:
            f.write(t.csv_text())
    if jobs:
        paths["runs"] = os.path.join(workdir, f"{stem}_runs.csv")
        write_runs_csv(paths["runs"], jobs)
    print(f"wrote {paths['markdown']}", flush=True)
    return paths


def cell_values(jobs, row, column, key="test_top1"):
    """Per-seed values of `key` of the jobs feeding one cell, in seed order."""
    picked = sorted((j for j in jobs if j.row == row and j.column == column),
                    key=lambda j: j.seed)
    return [j.value(key) for j in picked]


def fill_table(table, jobs, key="test_top1"):
    """Put every (row, column) of `jobs` into `table`, in the jobs' order."""
    for job in jobs:
        if (job.row, job.column) not in table.cells:
            table.add(job.row, job.column, cell_values(jobs, job.row, job.column, key))
    return table


# ----------------------------------------------------------------------------- command line

def parse_list(values, cast=str):
    """A comma list flag (string or list) as a list of `cast` values, empty entries dropped."""
    if isinstance(values, str):
        values = values.split(",")
    return [cast(v.strip()) for v in (values or []) if str(v).strip()]


def check_choices(values, allowed=METHODS, what="methods"):
    """ValueError unless `values` is a non-empty list of names from `allowed`."""
    bad = [v for v in values if v not in allowed]
    if bad:
        raise UserError(f"unknown {what} {bad}; choose from {list(allowed)}")
    if not values:
        raise UserError(f"no {what} given")


def define_common_flags(fv, *, seeds="0,1,2", compilation_cache="auto", sys_argv=None):
    """--config (+ --config.x=... overrides), --workdir, --seeds, --runs_dir, --lambda_file,
    --dry_run, --compilation_cache on the FlagValues `fv`."""
    from absl import flags  # noqa: PLC0415
    from ml_collections import config_flags  # noqa: PLC0415

    config_flags.DEFINE_config_file(
        "config", None, "Base config file; --config.x=value overrides apply to every run.",
        flag_values=fv, lock_config=True, sys_argv=sys_argv)
    flags.DEFINE_string("workdir", None, "Where tables and figures are written (and, unless "
                        "--runs_dir says otherwise, the runs, in <workdir>/runs).",
                        flag_values=fv)
    flags.DEFINE_string("seeds", seeds, "Comma-separated seeds of every cell.", flag_values=fv)
    flags.DEFINE_string("runs_dir", "", "Directory of the run sub-workdirs (default "
                        "<workdir>/runs). Share one between commands to reuse identical runs.",
                        flag_values=fv)
    flags.DEFINE_string("lambda_file", "", "JSON {method: lambda} (sweep_lambda's "
                        "chosen_lambda.json) applied to runs of those methods.", flag_values=fv)
    flags.DEFINE_boolean("dry_run", False, "List the runs (finished or to do) and stop.",
                         flag_values=fv)
    flags.DEFINE_string("compilation_cache", compilation_cache, "JAX persistent compilation "
                        "cache directory ('auto': <runs_dir>/.jax_cache; '' turns it off). Runs "
                        "that differ only in seed reuse compiled programs.", flag_values=fv)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)


def common_kwargs(fv):
    """run() keyword arguments of the common flags."""
    lambda_map = None
    if fv.lambda_file:
        lambda_map = read_json(fv.lambda_file)
        if lambda_map is None:
            raise UserError(f"--lambda_file={fv.lambda_file} does not exist")
    return {"config": fv.config, "workdir": fv.workdir, "seeds": parse_list(fv.seeds, int),
            "runs_dir": fv.runs_dir or None, "lambda_map": lambda_map, "dry_run": fv.dry_run}


def config_overrides(fv):
    """The --config.x=value overrides given on the command line, flat."""
    from ml_collections import config_flags  # noqa: PLC0415
    return dict(config_flags.get_override_values(fv["config"]))


def parse_command_line(module, argv):
    """A command module's run() keyword arguments for `argv`, parsed on fresh FlagValues
    (in-process: for tests and scripts)."""
    from absl import flags  # noqa: PLC0415
    fv = flags.FlagValues()
    define_common_flags(fv, seeds=getattr(module, "DEFAULT_SEEDS", "0,1,2"),
                        compilation_cache=getattr(module, "DEFAULT_COMPILATION_CACHE", "auto"),
                        sys_argv=argv)
    module.define_flags(fv)
    fv(argv)
    return module.kwargs_from_flags(fv)


def main(module, argv=None):
    """Entry point of `python -m mgr_jax.experiments.<module>`."""
    from absl import app, flags, logging  # noqa: PLC0415

    fv = flags.FLAGS
    define_common_flags(fv, seeds=getattr(module, "DEFAULT_SEEDS", "0,1,2"),
                        compilation_cache=getattr(module, "DEFAULT_COMPILATION_CACHE", "auto"))
    module.define_flags(fv)

    def _main(args):
        if len(args) > 1:
            raise app.UsageError(f"unexpected arguments: {args[1:]}")
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
        try:
            kwargs = module.kwargs_from_flags(fv)
            cache = fv.compilation_cache
            if cache == "auto":
                cache = os.path.join(kwargs["runs_dir"] or os.path.join(fv.workdir, "runs"),
                                     ".jax_cache")
            if cache and not fv.dry_run:
                import jax  # noqa: PLC0415
                jax.config.update("jax_compilation_cache_dir", cache)
            module.run(**kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(_main, argv=argv)


def define_variant_flags(fv, default_variants, variants):
    """The `--variants` flag of the ablation commands."""
    from absl import flags  # noqa: PLC0415
    flags.DEFINE_string("variants", ",".join(default_variants),
                        f"Rows, from {list(variants)}.", flag_values=fv)


def variant_kwargs_from_flags(fv, variants):
    """The common kwargs plus the checked `--variants` list."""
    kwargs = common_kwargs(fv)
    kwargs["variants"] = parse_list(fv.variants)
    check_choices(kwargs["variants"], variants, "variants")
    return kwargs


def variant_table(key, header, title, variants, chosen, config, workdir, *, seeds,
                  runs_dir=None, lambda_map=None, trainer=None, dry_run=False):
    """Run one row per variant key (`variants[key] = (label, overrides)`) x seeds and write a
    two-column table (test and val top-1, mean ± std) as `<key>.md` / `<key>.csv`."""
    jobs = [make_job(config, variants[v][1], seed, row=variants[v][0], column="run",
                     lambda_map=lambda_map) for v in chosen for seed in seeds]
    if not execute(jobs, workdir, runs_dir, trainer, dry_run, key):
        return {"jobs": jobs}
    table = Table(key, title, "Method", ["Test top-1 (%)", "Val top-1 (%)"],
                  notes=[f"Mean ± sample std over seeds {list(seeds)} (best-validation epoch)."])
    for v in chosen:
        row = variants[v][0]
        table.add(row, "Test top-1 (%)", cell_values(jobs, row, "run", "test_top1"))
        table.add(row, "Val top-1 (%)", cell_values(jobs, row, "run", "val_top1"))
    paths = write_report(workdir, key, [table], jobs, header=header)
    return {"table": table, "paths": paths, "jobs": jobs}


def runs_dir_of(workdir, runs_dir):
    return runs_dir or os.path.join(workdir, "runs")


def execute(jobs, workdir, runs_dir, trainer, dry_run, title=""):
    """Run (or, dry, list) the jobs; True when results can be tabulated."""
    runs_dir = runs_dir_of(workdir, runs_dir)
    if title:
        print(f"{title}: {len({j.name for j in jobs})} runs in {runs_dir}", flush=True)
    run_jobs(jobs, runs_dir, trainer=trainer, dry_run=dry_run)
    if dry_run:
        print_plan(jobs)
    return not dry_run

