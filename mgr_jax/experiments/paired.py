"""PCR against MGR over many seeds, paired by seed: does MPS add anything to PCR here?

    python -m mgr_jax.experiments.paired --config=configs/digits_few.py \
        --workdir=results/paired [--seeds=0,1,2,3,4,5,6,7,8,9] \
        [--finder_file=results/sweep_finder/chosen_finder.json] \
        [--finder=mps.finder_lr=1e-3,mps.normalize_hypergrad=true] [--update_every=1,4,16] \
        [--hypergradients=exact,finite_difference] [--subset_fraction=0.1]

Arms, each trained at every seed (one seed = one data order, one initialisation and one D_val
order for every arm, so the arms are compared as pairs):
  - PCR;
  - MGR with the finder setting (--finder_file, e.g. sweep_finder's chosen_finder.json, then
    the --finder overrides) at each mps.update_every of --update_every, with the first of
    --hypergradients; the others add an MGR arm each at update_every=1.
MGR runs log the meta-descent diagnostic (mps.log_meta_descent), which changes no number of
the training. --subset_fraction (default 0.1, the low-label setting; 0 keeps the config's)
applies to every arm.
Per arm: mean ± std of the best-validation epoch's test top-1; per MGR arm, the paired
difference MGR - PCR, its 95 % t confidence interval, the paired t-test and Wilcoxon
signed-rank p-values, the fraction of finder updates that lowered the meta-objective and its
mean change, the last epoch's latent displacement ||F(z) - z||, and the step time (1 /
results.json's steps_per_s: evaluation and the first epoch's compilation included) with its
ratio to PCR's, per seed. Writes paired.md, paired.csv (one line per arm, per-seed values
included) and paired_runs.csv.
"""
import csv
import math
import os
import sys

from absl import flags

from mgr_jax import hypergrad
from mgr_jax.errors import UserError
from mgr_jax.experiments import cli, runs, stats, sweep_finder, tables
from mgr_jax.run import config_lib

DEFAULT_SEEDS = ",".join(str(s) for s in range(10))
DEFAULT_UPDATE_EVERY = (1, 4, 16)
PCR = "PCR"
CSV_FIELDS = ("arm", "n", "mean", "std", "diff_mean", "diff_std", "ci_low", "ci_high",
              "t_pvalue", "wilcoxon_pvalue", "descending_pct", "mean_meta_change",
              "latent_displacement", "step_ms", "step_ratio_to_pcr", "values")


def arm_label(hypergradient, update_every, hypergradients):
    what = f"k={update_every}"
    if len(hypergradients) > 1:
        what = f"{'FD' if hypergradient == 'finite_difference' else hypergradient}, {what}"
    return f"MGR ({what})"


def plan(config, *, seeds, finder=None, update_every=DEFAULT_UPDATE_EVERY,
         hypergradients=("exact",), subset_fraction=0.1, lambda_map=None):
    """[(arm label, [jobs in seed order])], PCR first."""
    common = {"data.subset_fraction": float(subset_fraction)} if subset_fraction else {}
    arms = [(PCR, dict(common, method="pcr"))]
    for i, hg in enumerate(hypergradients):
        for k in (update_every if i == 0 else (1,)):
            overrides = dict(common, **dict(finder or {}))
            overrides.update({"method": "mgr", "mps.hypergradient": hg,
                              "mps.update_every": int(k), "mps.log_meta_descent": True})
            arms.append((arm_label(hg, k, hypergradients), overrides))
    out = []
    for label, overrides in arms:
        jobs = [runs.make_job(config, overrides, seed, row=label, column="paired",
                              lambda_map=lambda_map) for seed in sorted(seeds)]
        for job in jobs:  # a bad value stops the command before any training
            config_lib.validate(job.config, paths=False)
        out.append((label, jobs))
    return out


def _step_ms(job):
    sps = job.value("steps_per_s")
    return 1000.0 / sps if sps and math.isfinite(sps) else math.nan


def _mean(values):
    return stats.summarize(values).mean


def summarize_arms(arms):
    """One dict per arm (CSV_FIELDS' keys): PCR's own numbers, the MGR arms against PCR."""
    pcr_jobs = arms[0][1]
    pcr = [j.value("test_top1") for j in pcr_jobs]
    pcr_ms = [_step_ms(j) for j in pcr_jobs]
    rows = []
    for label, jobs in arms:
        values = [j.value("test_top1") for j in jobs]
        own = stats.summarize(values)
        ms = [_step_ms(j) for j in jobs]
        row = {"arm": label, "n": own.n, "mean": own.mean, "std": own.std,
               "step_ms": _mean(ms),
               "step_ratio_to_pcr": _mean([a / b for a, b in zip(ms, pcr_ms)]),
               "values": values}
        if label != PCR:
            cmp = stats.paired_comparison(pcr, values)
            diag = [sweep_finder.diagnostics(j) for j in jobs]
            row.update(diff_mean=cmp.diff.mean, diff_std=cmp.diff.std, ci_low=cmp.ci_low,
                       ci_high=cmp.ci_high, t_pvalue=cmp.t_pvalue,
                       wilcoxon_pvalue=cmp.wilcoxon_pvalue,
                       descending_pct=_mean([d[0] for d in diag]),
                       mean_meta_change=_mean([d[1] for d in diag]),
                       latent_displacement=_mean([d[2] for d in diag]))
        rows.append(row)
    return rows


def _f(x, digits=2, kind="f"):
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}{kind}}"


def markdown(rows, seeds, pcr_label=PCR):
    head = ("| Arm | Test top-1 (%) | MGR − PCR | 95 % CI | t-test p | Wilcoxon p | "
            "Descending updates (%) | Mean ΔM | Latent displacement | Step (ms) | ×PCR step |")
    out = [f"### PCR vs MGR, paired by seed (seeds {list(seeds)})", "", head,
           "|" + "---|" * 11]
    for r in rows:
        paired = r["arm"] != pcr_label
        cells = [r["arm"], f"{_f(r['mean'])} ± {_f(r['std'])} (n={r['n']})",
                 _f(r.get("diff_mean")) if paired else "",
                 f"[{_f(r.get('ci_low'))}, {_f(r.get('ci_high'))}]" if paired else "",
                 _f(r.get("t_pvalue"), 3) if paired else "",
                 _f(r.get("wilcoxon_pvalue"), 3) if paired else "",
                 _f(r.get("descending_pct"), 1) if paired else "",
                 _f(r.get("mean_meta_change"), 2, "e") if paired else "",
                 _f(r.get("latent_displacement"), 3) if paired else "",
                 _f(r["step_ms"], 1), _f(r["step_ratio_to_pcr"], 2)]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "Test top-1 of the best-validation epoch, mean ± sample std. MGR − PCR: the "
            "mean of the per-seed differences, its 95 % t interval, the paired t-test and the "
            "Wilcoxon signed-rank test (two-sided; exact p up to 25 non-zero differences). "
            "Descending updates: finder updates that lowered CE_val(theta') on their own "
            "batch; ΔM their mean change; latent displacement: mean ||F(z) - z|| in the last "
            "epoch; step time 1 / steps_per_s of the whole run (evaluation and compilation "
            "included), ×PCR per seed."]
    return "\n".join(out) + "\n"


def _csv_value(x):
    if isinstance(x, list):
        return ";".join(_f(v, 6, "g") if math.isfinite(v) else "nan" for v in x)
    if isinstance(x, float):
        return f"{x:.6g}" if math.isfinite(x) else "nan"
    return "" if x is None else x


def run(config, workdir, *, seeds=tuple(range(10)), finder=None,
        update_every=DEFAULT_UPDATE_EVERY, hypergradients=("exact",), subset_fraction=0.1,
        runs_dir=None, lambda_map=None, trainer=None, dry_run=False):
    """Train the arms, compare them; write paired.md, paired.csv, paired_runs.csv.

    Returns {"rows": [...], "paths": {...}, "jobs": [...]} (only "jobs" on a dry run).
    """
    if len(seeds) < 2:
        raise UserError("a paired comparison needs at least two seeds")
    if not update_every:
        raise UserError("no update_every given for the MGR arms")
    cli.check_choices(list(hypergradients), hypergrad.HYPERGRADIENTS, "hypergradients")
    arms = plan(config, seeds=seeds, finder=finder, update_every=update_every,
                hypergradients=hypergradients, subset_fraction=subset_fraction,
                lambda_map=lambda_map)
    jobs = [j for _, arm_jobs in arms for j in arm_jobs]
    if not runs.execute(jobs, workdir, runs_dir, trainer, dry_run, "paired"):
        return {"jobs": jobs}
    rows = summarize_arms(arms)
    os.makedirs(workdir, exist_ok=True)
    paths = {"markdown": os.path.join(workdir, "paired.md"),
             "paired": os.path.join(workdir, "paired.csv"),
             "runs": os.path.join(workdir, "paired_runs.csv")}
    setting = ", ".join(f"{k}={v}" for k, v in (finder or {}).items()) or "the config's"
    with open(paths["markdown"], "w") as f:
        f.write(f"# Paired comparison\n\nMGR's finder setting: {setting}\n\n"
                + markdown(rows, sorted(seeds)))
    with open(paths["paired"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for r in rows:
            writer.writerow([_csv_value(r.get(k)) for k in CSV_FIELDS])
    tables.write_runs_csv(paths["runs"], jobs)
    print(f"wrote {paths['markdown']}", flush=True)
    return {"rows": rows, "paths": paths, "jobs": jobs}


def define_flags(fv):
    sweep_finder.define_chosen_flags(fv)
    flags.DEFINE_string("update_every", ",".join(map(str, DEFAULT_UPDATE_EVERY)),
                        "mps.update_every of the MGR arms.", flag_values=fv)
    flags.DEFINE_string("hypergradients", "exact", "mps.hypergradient of the MGR arms (the "
                        "first at every --update_every, the others at 1).", flag_values=fv)
    flags.DEFINE_float("subset_fraction", 0.1, "data.subset_fraction of every arm (0: the "
                       "config's).", flag_values=fv)


def kwargs_from_flags(fv):
    kwargs = cli.common_kwargs(fv)
    kwargs.update(finder=sweep_finder.chosen_from_flags(fv),
                  update_every=cli.parse_list(fv.update_every, int),
                  hypergradients=cli.parse_list(fv.hypergradients),
                  subset_fraction=fv.subset_fraction)
    return kwargs


if __name__ == "__main__":
    cli.main(sys.modules[__name__])
