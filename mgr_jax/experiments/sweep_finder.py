"""The finder optimiser's settings chosen on D_val, as sweep_lambda chooses lambda.

    python -m mgr_jax.experiments.sweep_finder --config=configs/digits_few.py \
        --workdir=results/sweep_finder [--seeds=0] [--method=mgr] \
        [--finder_lrs=1e-4,1e-3,1e-2] [--betas=0.9/0.999,0.5/0.9] [--normalize=false,true] \
        [--warmups=0] [--optimizers=adam]

Every setting of the grid (optimiser x learning rate x Adam's betas x normalised
hypergradient x warm-up; betas for adam only) trains at each of --seeds with the meta-descent
diagnostic on. The setting with the best mean best-epoch validation top-1 is chosen, ties
going to the earlier in the grid (the first is the paper's Adam lr 1e-4 when the grid holds
it). The choice reads validation only: test top-1 is read for the chosen setting alone, after
the choice, and is written nowhere else. Writes sweep_finder.md, sweep_finder.csv (per setting:
validation top-1, the fraction of finder updates that lowered the meta-objective, its mean
change, the final latent displacement), sweep_finder_chosen.csv (the chosen setting's val and
test top-1), sweep_finder_runs.csv (validation only) and chosen_finder.json, which
`paired` takes as --finder_file.
"""
import ast
import csv
import math
import os
import sys

from absl import flags

from mgr_jax import method_settings
from mgr_jax.errors import UserError
from mgr_jax.experiments import cli, runs, sweep_lambda, tables
from mgr_jax.files import read_json, write_json
from mgr_jax.run import config_lib

DEFAULT_SEEDS = "0"
DEFAULT_LRS = (1e-4, 1e-3, 1e-2)
DEFAULT_BETAS = ((0.9, 0.999), (0.5, 0.9))
DEFAULT_NORMALIZE = (False, True)
DEFAULT_WARMUPS = (0,)
DEFAULT_OPTIMIZERS = ("adam",)
COLUMNS = ("Val top-1 (%)", "Descending updates (%)", "Mean ΔM", "Latent displacement")
# Config sections a finder setting may name (--finder, chosen_finder.json).
FINDER_SECTIONS = ("mps", "finder")


# ----------------------------------------------------------------------------- settings

def grid(lrs=DEFAULT_LRS, betas=DEFAULT_BETAS, normalize=DEFAULT_NORMALIZE,
         warmups=DEFAULT_WARMUPS, optimizers=DEFAULT_OPTIMIZERS):
    """[{config key: value}] of the finder settings, in grid order (sgd: no betas)."""
    out = []
    for opt in optimizers:
        for lr in lrs:
            for b1, b2 in (betas if opt == "adam" else [(0.9, 0.999)]):
                for norm in normalize:
                    for warmup in warmups:
                        out.append({"mps.finder_optimizer": opt, "mps.finder_lr": float(lr),
                                    "mps.finder_b1": float(b1), "mps.finder_b2": float(b2),
                                    "mps.normalize_hypergrad": bool(norm),
                                    "mps.finder_warmup_steps": int(warmup)})
    return out


def label(setting):
    """A short name of a finder setting, e.g. "adam lr 0.001 β 0.5/0.9 norm"."""
    opt = setting.get("mps.finder_optimizer", "adam")
    text = f"{opt} lr {setting.get('mps.finder_lr', 1e-4):g}"
    if opt == "adam":
        text += f" β {setting.get('mps.finder_b1', 0.9):g}/{setting.get('mps.finder_b2', 0.999):g}"
    if setting.get("mps.normalize_hypergrad"):
        text += " norm"
    if setting.get("mps.finder_warmup_steps"):
        text += f" warm-up {setting['mps.finder_warmup_steps']}"
    return text


def _value(text):
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def check_setting(setting):
    """UserError unless every key is a known mps.* / finder.* config field."""
    for key in setting:
        section, _, field = key.partition(".")
        if section not in FINDER_SECTIONS or field not in config_lib.SCHEMA[section]:
            raise UserError(f"finder setting {key} is not a config field of "
                            f"{' or '.join(s + '.*' for s in FINDER_SECTIONS)}")
    return setting


def parse_setting(text):
    """'mps.finder_lr=1e-3,mps.normalize_hypergrad=true' -> {key: value}."""
    setting = {}
    for item in cli.parse_list(text):
        key, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"finder setting {item!r} is not key=value")
        setting[key.strip()] = _value(value)
    return check_setting(setting)


def read_setting_file(path):
    """The setting a sweep chose (chosen_finder.json)."""
    setting = read_json(path)
    if not isinstance(setting, dict):
        raise UserError(f"{path} does not exist or is not a JSON object of finder settings")
    return check_setting(setting)


# ----------------------------------------------------------------------------- diagnostics

def diagnostics(job):
    """(fraction of finder updates that lowered the meta-objective in %, mean change, final
    latent displacement) of a run from its metrics.jsonl epoch records (NaN where absent):
    per-epoch means, averaged over the epochs that took meta-updates; the displacement is
    the last epoch's."""
    records = runs.read_metrics(job.workdir, "epoch") if job.workdir else []
    meta = [r for r in records if "meta_descended" in r]
    frac = 100.0 * sum(r["meta_descended"] for r in meta) / len(meta) if meta else math.nan
    change = sum(r["meta_descent"] for r in meta) / len(meta) if meta else math.nan
    moved = [r["latent_displacement"] for r in records if "latent_displacement" in r]
    return frac, change, moved[-1] if moved else math.nan


# ----------------------------------------------------------------------------- the command

def choose(val_by_setting):
    """Index of the best mean validation top-1 (NaN skipped; ties: the earliest); None."""
    return sweep_lambda.choose_lambda(dict(enumerate(val_by_setting)))


def _write_runs(path, jobs):
    """The sweep's runs without their test top-1 (the sweep never reads it)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "setting", "seed", "status", "val_top1", "best_epoch",
                         "wall_clock_s", "steps_per_s"])
        for job in jobs:
            r = job.result or {}
            writer.writerow([job.name, job.column, job.seed, job.status]
                            + [r.get(k, "") for k in ("val_top1", "best_epoch", "wall_clock_s",
                                                      "steps_per_s")])


def run(config, workdir, *, seeds=(0,), method="mgr", settings=None, runs_dir=None,
        lambda_map=None, trainer=None, dry_run=False):
    """Train the grid, choose on validation, write the tables and chosen_finder.json.

    settings: the grid (`grid()` by default). Returns {"chosen": setting or None, "tables",
    "paths", "jobs"} (only "jobs" on a dry run).
    """
    cli.check_choices([method], runs.MPS_METHODS, "MPS methods")
    settings = grid() if settings is None else [check_setting(dict(s)) for s in settings]
    if not settings:
        raise UserError("the finder grid is empty")
    labels = [label(s) for s in settings]
    if len(set(labels)) != len(labels):
        raise UserError(f"the finder grid repeats a setting: {labels}")
    jobs = [runs.make_job(config, dict(s, method=method, **{"mps.log_meta_descent": True}),
                          seed, row=labels[i], column=labels[i], lambda_map=lambda_map)
            for i, s in enumerate(settings) for seed in seeds]
    for job in jobs:  # a bad value stops the sweep before any training
        config_lib.validate(job.config, paths=False)
    if not runs.execute(jobs, workdir, runs_dir, trainer, dry_run, "sweep_finder"):
        return {"jobs": jobs}
    sweep = tables.Table("sweep_finder", f"Finder settings of {tables.TABLE_LABELS[method]} "
                         f"(seeds {list(seeds)}); chosen by validation top-1 only",
                         "Finder setting", COLUMNS, decimals={"Mean ΔM": 6})
    val_means = []
    for name in labels:
        picked = sorted((j for j in jobs if j.column == name), key=lambda j: j.seed)
        vals = [j.value("val_top1") for j in picked]
        val_means.append(tables.mean_std(vals)[0])
        diag = [diagnostics(j) for j in picked]
        sweep.add(name, COLUMNS[0], vals)
        for c, column in enumerate(COLUMNS[1:]):
            sweep.add(name, column, [d[c] for d in diag])
    best = choose(val_means)
    chosen = None if best is None else settings[best]
    final = tables.Table("sweep_finder_chosen", "The chosen setting (its test top-1 is read "
                         "only now)", "Finder setting", ["Val top-1 (%)", "Test top-1 (%)"])
    os.makedirs(workdir, exist_ok=True)
    paths = {}
    if chosen is not None:
        picked = sorted((j for j in jobs if j.column == labels[best]), key=lambda j: j.seed)
        final.add(labels[best], "Val top-1 (%)", [j.value("val_top1") for j in picked])
        final.add(labels[best], "Test top-1 (%)", [j.value("test_top1") for j in picked])
        paths["chosen"] = os.path.join(workdir, "chosen_finder.json")
        write_json(paths["chosen"], chosen)
    else:
        print("no finder setting could be chosen: every sweep run failed", flush=True)
    sweep.notes = ["Descending updates: finder updates that lowered CE_val(theta') on their own "
                   "batch (mps.log_meta_descent); ΔM their mean change; latent displacement: "
                   "mean ||F(z) - z|| in the last epoch."]
    out_tables = [sweep, final]
    paths.update(tables.write_report(workdir, "sweep_finder", out_tables,
                                     header="finder sweep"))
    paths["runs"] = os.path.join(workdir, "sweep_finder_runs.csv")
    _write_runs(paths["runs"], jobs)
    return {"chosen": chosen, "tables": out_tables, "paths": paths, "jobs": jobs}


def define_chosen_flags(fv):
    """--finder_file and --finder: the finder setting of the MGR arms of another command."""
    flags.DEFINE_string("finder_file", "", "JSON of finder settings (sweep_finder's "
                        "chosen_finder.json) for the MGR arms.", flag_values=fv)
    flags.DEFINE_string("finder", "", "Finder settings for the MGR arms, key=value,... "
                        "(mps.* / finder.* fields), applied after --finder_file.",
                        flag_values=fv)


def chosen_from_flags(fv):
    """The setting `define_chosen_flags`' flags give: the file's, then --finder's."""
    finder = read_setting_file(fv.finder_file) if fv.finder_file else {}
    finder.update(parse_setting(fv.finder))
    return finder


def define_flags(fv):
    flags.DEFINE_string("method", "mgr", "The MPS method swept (mgr or gda_mps).",
                        flag_values=fv)
    flags.DEFINE_string("finder_lrs", ",".join(f"{x:g}" for x in DEFAULT_LRS),
                        "Finder learning rates.", flag_values=fv)
    flags.DEFINE_string("betas", ",".join(f"{a:g}/{b:g}" for a, b in DEFAULT_BETAS),
                        "Adam's (b1/b2) pairs.", flag_values=fv)
    flags.DEFINE_string("normalize", "false,true", "mps.normalize_hypergrad values.",
                        flag_values=fv)
    flags.DEFINE_string("warmups", "0", "mps.finder_warmup_steps values.", flag_values=fv)
    flags.DEFINE_string("optimizers", "adam", "mps.finder_optimizer values (adam, sgd).",
                        flag_values=fv)


def _betas(text):
    out = []
    for pair in cli.parse_list(text):
        parts = pair.split("/")
        if len(parts) != 2:
            raise UserError(f"--betas entry {pair!r} is not b1/b2")
        out.append((float(parts[0]), float(parts[1])))
    return out


def _bools(text):
    values = [_value(v) for v in cli.parse_list(text)]
    if not all(isinstance(v, bool) for v in values):
        raise UserError(f"--normalize={text!r} must list true / false")
    return values


def kwargs_from_flags(fv):
    kwargs = cli.common_kwargs(fv)
    optimizers = cli.parse_list(fv.optimizers)
    cli.check_choices(optimizers, method_settings.FINDER_OPTIMIZERS, "finder optimizers")
    settings = grid(cli.parse_list(fv.finder_lrs, float), _betas(fv.betas),
                    _bools(fv.normalize), cli.parse_list(fv.warmups, int), optimizers)
    kwargs.update(method=fv.method, settings=settings)
    return kwargs


if __name__ == "__main__":
    cli.main(sys.modules[__name__])
