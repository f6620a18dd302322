"""Base, PCR and MGR on one setting over many seeds, paired by seed, read by a pre-registered
decision rule (README, "Does MPS help here?", setting A).

    python -m mgr_jax.experiments.transfer --config=configs/fashion_transfer.py \
        --workdir=results/transfer --seeds=0,1,...,19 --fd_seeds=0,1,2,3,4 \
        [--lambda_file=results/lambda/chosen_lambda.json] \
        [--finder_file=results/finder/chosen_finder.json] [--margin=0.36] [--arms=base,pcr]

Arms: base, PCR, MGR (exact hypergradient) at every seed, and MGR with finite differences at
--fd_seeds; one seed = one initialisation, data order and draw of latents and augmentations,
the same in every arm. The endpoint is the test top-1 of the best-validation epoch.
Primary: d = MGR - PCR, its 95 % t interval, read by `stats.decision` with --margin (the
paper's smallest PCR -> MGR gain, 0.36 points): above 0 "MPS helps here", else an upper end
below the margin "no gain larger than the margin here", else "not detected". Secondary:
PCR - base and MGR - base with Holm-corrected p-values over those two; FD against PCR and
against exact; the design's power (`stats.detectable_difference`); the preconditions (PCR
above base; the first meta-step's hypergradient norm against the median of epochs 2-10's,
from the MGR runs' per-step records: the config should log every step).
Writes transfer.md, transfer.json (every number) and transfer_runs.csv. --arms trains only
those arms (e.g. base and PCR, which do not need the finder's choice, beside the finder sweep)
and compares nothing; the command without it finds them finished.
"""
import math
import os
import sys

import numpy as np
from absl import flags

from mgr_jax.errors import UserError
from mgr_jax.experiments import cli, runs, stats, sweep_finder, tables
from mgr_jax.files import write_json
from mgr_jax.run import config_lib

BASE, PCR, MGR, MGR_FD = "base", "PCR", "MGR", "MGR (FD)"
DEFAULT_SEEDS = ",".join(str(s) for s in range(20))
PAPER_SMALLEST_GAIN = 0.36  # points: the paper's smallest PCR -> MGR gain (Table 1)
READINGS = {stats.HELPS: "MPS helps here",
            stats.NO_GAIN_LARGER: "no gain larger than {margin} points here",
            stats.NOT_DETECTED: "not detected"}


# --arms names of the arms, in plan order.
ARM_NAMES = {"base": BASE, "pcr": PCR, "mgr": MGR, "mgr_fd": MGR_FD}


def plan(config, *, seeds, fd_seeds=(), finder=None, lambda_map=None):
    """[(arm label, [jobs in seed order])]: base, PCR, MGR, then MGR (FD) at `fd_seeds`.

    MGR takes PCR's lambda from `lambda_map` unless the map names one for mgr (the paper's
    rule: MGR's hyperparameters are those chosen for PCR)."""
    lambda_map = dict(lambda_map or {})
    if "pcr" in lambda_map:
        lambda_map.setdefault("mgr", lambda_map["pcr"])
    mgr = dict(finder or {}, method="mgr")
    arms = [(BASE, {"method": "base"}, seeds), (PCR, {"method": "pcr"}, seeds),
            (MGR, dict(mgr, **{"mps.hypergradient": "exact"}), seeds)]
    if fd_seeds:
        arms.append((MGR_FD, dict(mgr, **{"mps.hypergradient": "finite_difference"}), fd_seeds))
    out = []
    for label, overrides, arm_seeds in arms:
        jobs = [runs.make_job(config, overrides, s, row=label, column="transfer",
                              lambda_map=lambda_map) for s in sorted(arm_seeds)]
        for job in jobs:  # a bad value stops the command before any training
            config_lib.validate(job.config, paths=False)
        out.append((label, jobs))
    return out


def first_step_ratio(train_records, key="meta_grad_norm"):
    """`key` at the first logged step over the median of its per-step values in epochs 2-10
    (NaN when the records lack either)."""
    values = [(r.get("epoch"), r.get(key)) for r in train_records]
    values = [(e, v) for e, v in values if e is not None and v is not None]
    later = [v for e, v in values if 2 <= e <= 10]
    if not values or not later:
        return math.nan
    return float(values[0][1] / np.median(later))


def _pairs(a, b):
    seeds = sorted(set(a) & set(b))
    return seeds, stats.paired_comparison([a[s] for s in seeds], [b[s] for s in seeds])


def analyse(values, *, margin=PAPER_SMALLEST_GAIN, ratios=()):
    """The comparison's numbers from `values` {arm: {seed: test top-1}} (arms as `plan`'s
    labels; MGR (FD) optional) and `ratios`, the MGR runs' first-step norm ratios."""
    arms = {label: stats.summarize(list(v.values())) for label, v in values.items()}
    out = {"margin": margin, "arms": {k: vars(s) for k, s in arms.items()}, "comparisons": {}}
    for name, (a, b) in {"MGR - PCR": (PCR, MGR), "PCR - base": (BASE, PCR),
                         "MGR - base": (BASE, MGR), "MGR (FD) - PCR": (PCR, MGR_FD),
                         "MGR (FD) - MGR": (MGR, MGR_FD)}.items():
        if a in values and b in values:
            seeds, cmp = _pairs(values[a], values[b])
            row = dict(cmp.as_dict(), seeds=seeds,
                       detectable=stats.detectable_difference(cmp.diff.std, cmp.n))
            out["comparisons"][name] = row
    against_base = [out["comparisons"][k] for k in ("PCR - base", "MGR - base")]
    for test in ("t_pvalue", "wilcoxon_pvalue"):
        for row, p in zip(against_base, stats.holm([r[test] for r in against_base])):
            row[f"{test}_holm"] = p
    primary = out["comparisons"]["MGR - PCR"]
    reading = stats.decision(primary["ci_low"], primary["ci_high"], margin)
    out["decision"] = reading
    out["answer"] = READINGS[reading].format(margin=margin)
    pcr_base = out["comparisons"]["PCR - base"]
    finite = [r for r in ratios if math.isfinite(r)]
    out["preconditions"] = {
        "pcr_above_base": bool(math.isfinite(pcr_base["ci_low"]) and pcr_base["ci_low"] > 0),
        "first_meta_step_ratio_median": float(np.median(finite)) if finite else math.nan,
        "first_meta_step_ratio_range": [min(finite), max(finite)] if finite else []}
    return out


def _f(x, digits=2):
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def markdown(result):
    """The tables of `analyse`'s result."""
    lines = ["| Arm | n | Test top-1 (%) |", "| --- | --- | --- |"]
    for label, s in result["arms"].items():
        lines.append(f"| {label} | {s['n']} | {_f(s['mean'])} ± {_f(s['std'])} |")
    lines += ["", "| Difference | n | Mean | 95 % CI | t-test p | Wilcoxon p | "
              "Detectable at 80 % power |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in result["comparisons"].items():
        holm = "t_pvalue_holm" in r
        t_p = _f(r["t_pvalue"], 4) + (f" (Holm {_f(r['t_pvalue_holm'], 4)})" if holm else "")
        w_p = (_f(r["wilcoxon_pvalue"], 4)
               + (f" (Holm {_f(r['wilcoxon_pvalue_holm'], 4)})" if holm else ""))
        lines.append(f"| {name} | {r['n']} | {_f(r['diff_mean'])} | [{_f(r['ci_low'])}, "
                     f"{_f(r['ci_high'])}] | {t_p} | {w_p} | {_f(r['detectable'])} |")
    pre = result["preconditions"]
    lines += ["", f"Answer by the pre-registered rule (MGR - PCR, margin {result['margin']}): "
              f"**{result['answer']}**.", "",
              f"Preconditions: PCR above base: {'yes' if pre['pcr_above_base'] else 'no'}; "
              "first meta-step's meta_grad_norm / median of epochs 2-10's: median "
              f"{_f(pre['first_meta_step_ratio_median'])} over the MGR runs (range "
              + ", ".join(_f(x) for x in pre["first_meta_step_ratio_range"]) + ")."]
    return "\n".join(lines) + "\n"


def run(config, workdir, *, seeds=tuple(range(20)), fd_seeds=(), finder=None,
        margin=PAPER_SMALLEST_GAIN, runs_dir=None, lambda_map=None, trainer=None,
        dry_run=False, arms=None):
    """Train the arms, compare them; write transfer.md, transfer.json, transfer_runs.csv.

    Returns {"result": ..., "paths": ..., "jobs": ...} (only "jobs" on a dry run)."""
    if len(seeds) < 2:
        raise UserError("a paired comparison needs at least two seeds")
    if not set(fd_seeds) <= set(seeds):
        raise UserError(f"--fd_seeds {sorted(set(fd_seeds) - set(seeds))} are not in --seeds; "
                        "the FD arm is compared with the other arms at the same seeds")
    only = None
    if arms:
        unknown = sorted(set(arms) - set(ARM_NAMES))
        if unknown:
            raise UserError(f"--arms {unknown} are not arms; choose from {list(ARM_NAMES)}")
        only = {ARM_NAMES[a] for a in arms}
    planned = plan(config, seeds=seeds, fd_seeds=fd_seeds, finder=finder,
                   lambda_map=lambda_map)
    arms = [(label, jobs) for label, jobs in planned if only is None or label in only]
    jobs = [j for _, arm_jobs in arms for j in arm_jobs]
    if not runs.execute(jobs, workdir, runs_dir, trainer, dry_run, "transfer"):
        return {"jobs": jobs}
    if len(arms) < len(planned):
        print(f"trained the arms {[label for label, _ in arms]}; run without --arms to "
              "compare", flush=True)
        return {"jobs": jobs}
    values = {label: {j.seed: j.value("test_top1") for j in arm_jobs}
              for label, arm_jobs in arms}
    ratios = [first_step_ratio(runs.read_metrics(j.workdir, "train"))
              for label, arm_jobs in arms if label == MGR for j in arm_jobs]
    result = analyse(values, margin=margin, ratios=ratios)
    result["seeds"], result["fd_seeds"] = sorted(seeds), sorted(fd_seeds)
    result["values"] = {k: {str(s): v for s, v in sorted(d.items())} for k, d in values.items()}
    result["finder"] = dict(finder or {})
    result["lambda"] = {label: runs.get_lambda(arm_jobs[0].config) for label, arm_jobs in arms}
    os.makedirs(workdir, exist_ok=True)
    paths = {name: os.path.join(workdir, f"transfer{ext}") for name, ext in
             (("markdown", ".md"), ("json", ".json"), ("runs", "_runs.csv"))}
    with open(paths["markdown"], "w") as f:
        f.write(f"# Base, PCR and MGR paired by seed\n\nSeeds {result['seeds']} (FD: "
                f"{result['fd_seeds']}); MGR's finder: {result['finder'] or 'the config'}; "
                f"lambda {result['lambda']}\n\n" + markdown(result))
    write_json(paths["json"], result)
    tables.write_runs_csv(paths["runs"], jobs)
    print(markdown(result), flush=True)
    print(f"wrote {paths['markdown']}", flush=True)
    return {"result": result, "paths": paths, "jobs": jobs}


def define_flags(fv):
    flags.DEFINE_string("fd_seeds", "", "Seeds of the finite-difference MGR arm (a subset of "
                        "--seeds; empty: no FD arm).", flag_values=fv)
    sweep_finder.define_chosen_flags(fv)
    flags.DEFINE_string("arms", "", "Train only these arms (base, pcr, mgr, mgr_fd) and "
                        "compare nothing; empty: every arm, then the comparison.",
                        flag_values=fv)
    flags.DEFINE_float("margin", PAPER_SMALLEST_GAIN, "The smallest MGR - PCR gain that "
                       "matters, in points (the decision rule's).", flag_values=fv)


def kwargs_from_flags(fv):
    kwargs = cli.common_kwargs(fv)
    kwargs.update(finder=sweep_finder.chosen_from_flags(fv),
                  fd_seeds=cli.parse_list(fv.fd_seeds, int), margin=fv.margin,
                  arms=cli.parse_list(fv.arms))
    return kwargs


if __name__ == "__main__":
    cli.main(sys.modules[__name__])
