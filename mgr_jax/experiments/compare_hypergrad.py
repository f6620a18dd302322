"""Table 4: the exact (second-order) MPS hypergradient against the finite-difference one.

    python -m mgr_jax.experiments.compare_hypergrad --config=configs/cars.py \
        --workdir=results/table4 --lambda_file=results/lambda/chosen_lambda.json \
        [--seeds=0,1,2] [--methods=mgr] [--diagnostic=separate|in_arms|none]

Per seed, two timing arms train the same config with mps.hypergradient=exact and
=finite_difference (mps.log_hypergrad_cosine off, so neither pays for the other's
hypergradient): test top-1, wall-clock, mean step time (1 / results' steps_per_s) and the
exact / finite-difference ratios, paired by seed.

The agreement of the two hypergradients is measured on the same batches during training, in
one more run per seed (--diagnostic=separate, the default): the exact arm's config with
mps.log_hypergrad_cosine=True, where every step computes both hypergradients and logs their
cosine and norm ratio ||exact|| / ||finite difference||; metrics.jsonl's per-epoch means are
averaged over the epochs. That run's step time over the exact arm's is the logging overhead.
--diagnostic=in_arms logs in the two arms themselves instead (one run fewer per seed; their
timings then include the extra hypergradient, and the table says so); none skips it.
Unlike the other commands, the persistent compilation cache is off by default here
(--compilation_cache=auto turns it on), so that every run's time includes its compilation.
"""
import csv
import math
import os
import sys

from absl import flags

from mgr_jax.errors import UserError
from mgr_jax.experiments import cli, runs, tables

ARMS = (("exact", "2nd-order (exact)"),
        ("finite_difference", "1st-order approx. (finite difference)"))
DEFAULT_METHODS = ("mgr",)
# No persistent compilation cache by default: every arm then pays for its own compilation, so
# no arm's wall-clock is shortened by programs another run (or command) compiled before.
DEFAULT_COMPILATION_CACHE = ""
DIAGNOSTICS = ("separate", "in_arms", "none")
COLUMNS = ("Test top-1 (%)", "Val top-1 (%)", "Wall-clock (s)", "Step time (ms)")
AGREEMENT = ("cos(exact, FD)", "min epoch cos", "‖exact‖ / ‖FD‖", "logging overhead (×)")


def _prefix(method, methods):
    return f"{tables.TABLE_LABELS[method]}: " if len(methods) > 1 else ""


def plan(config, *, seeds, methods, diagnostic, lambda_map=None):
    """The jobs: per method and seed, the two timing arms and (separate) the diagnostic."""
    jobs = []
    for m in methods:
        for hg, label in ARMS:
            jobs += [runs.make_job(
                config, {"method": m, "mps.hypergradient": hg, "mps.finder_update": "meta",
                         "mps.log_hypergrad_cosine": diagnostic == "in_arms"}, seed,
                row=_prefix(m, methods) + label, column=hg, lambda_map=lambda_map)
                for seed in seeds]
        if diagnostic == "separate":
            jobs += [runs.make_job(
                config, {"method": m, "mps.hypergradient": "exact", "mps.finder_update": "meta",
                         "mps.log_hypergrad_cosine": True}, seed,
                row=_prefix(m, methods) + "diagnostic", column="diagnostic",
                lambda_map=lambda_map) for seed in seeds]
    return jobs


def agreement(workdir, primary="exact"):
    """Per-epoch (epoch, cosine, ||exact|| / ||FD||) of a run that logged both hypergradients.

    `primary` is the run's own mps.hypergradient: the logged norm ratio is ||own|| / ||other||.
    """
    out = []
    for rec in runs.read_metrics(workdir, "epoch"):
        if "hypergrad_cosine" not in rec:
            continue
        ratio = rec.get("hypergrad_norm_ratio", math.nan)
        if primary != "exact" and ratio:
            ratio = 1.0 / ratio
        out.append((rec["epoch"], rec["hypergrad_cosine"], ratio))
    return out


def _step_ms(job):
    sps = job.value("steps_per_s")
    return 1000.0 / sps if sps and math.isfinite(sps) else math.nan


def run(config, workdir, *, seeds=(0, 1, 2), methods=DEFAULT_METHODS, diagnostic="separate",
        runs_dir=None, lambda_map=None, trainer=None, dry_run=False):
    """Train the arms (and diagnostics); write compare_hypergrad.md, compare_hypergrad.csv,
    compare_hypergrad_agreement.csv, compare_hypergrad_per_epoch.csv, compare_hypergrad_runs.csv.

    Returns {"tables": [main, agreement], "paths": {...}, "jobs": [...]} (only "jobs" dry).
    """
    if diagnostic not in DIAGNOSTICS:
        raise UserError(f"diagnostic={diagnostic!r}; choose one of {list(DIAGNOSTICS)}")
    cli.check_choices(list(methods), runs.MPS_METHODS, "MPS methods")
    jobs = plan(config, seeds=seeds, methods=methods, diagnostic=diagnostic,
                lambda_map=lambda_map)
    if not runs.execute(jobs, workdir, runs_dir, trainer, dry_run, "compare_hypergrad"):
        return {"jobs": jobs}

    def arm(m, hg, seed):
        return next(j for j in jobs if j.config.method == m and j.column == hg
                    and j.seed == seed)

    decimals = {"Wall-clock (s)": 1, "Step time (ms)": 1}
    main = tables.Table("compare_hypergrad", "Exact vs finite-difference hypergradient",
                        "Hypergradient", COLUMNS, decimals=decimals)
    agree = tables.Table("compare_hypergrad_agreement",
                         "Agreement of the two hypergradients on the same batches", "Method",
                         AGREEMENT, decimals=3)
    per_epoch = []
    for m in methods:
        pre = _prefix(m, methods)
        for hg, label in ARMS:
            picked = [arm(m, hg, s) for s in seeds]
            main.add(pre + label, COLUMNS[0], [j.value("test_top1") for j in picked])
            main.add(pre + label, COLUMNS[1], [j.value("val_top1") for j in picked])
            main.add(pre + label, COLUMNS[2], [j.value("wall_clock_s") for j in picked])
            main.add(pre + label, COLUMNS[3], [_step_ms(j) for j in picked])
        ratio_row = pre + "exact / finite difference"
        decimals.update({(ratio_row, COLUMNS[2]): 3, (ratio_row, COLUMNS[3]): 3})
        ex = [arm(m, "exact", s) for s in seeds]
        fd = [arm(m, "finite_difference", s) for s in seeds]
        main.add(ratio_row, COLUMNS[2], [a.value("wall_clock_s") / b.value("wall_clock_s")
                                         for a, b in zip(ex, fd)])
        main.add(ratio_row, COLUMNS[3], [_step_ms(a) / _step_ms(b) for a, b in zip(ex, fd)])
        if diagnostic == "none":
            continue
        cos, low, norm, overhead = [], [], [], []
        for seed in seeds:
            source = arm(m, "diagnostic" if diagnostic == "separate" else "exact", seed)
            epochs = agreement(source.workdir)
            for epoch, c, r in epochs:
                per_epoch.append((m, seed, epoch, c, r))
            cos.append(sum(e[1] for e in epochs) / len(epochs) if epochs else math.nan)
            low.append(min(e[1] for e in epochs) if epochs else math.nan)
            norm.append(sum(e[2] for e in epochs) / len(epochs) if epochs else math.nan)
            if diagnostic == "separate":
                overhead.append(_step_ms(source) / _step_ms(arm(m, "exact", seed)))
        label = tables.TABLE_LABELS[m]
        agree.add(label, AGREEMENT[0], cos)
        agree.add(label, AGREEMENT[1], low)
        agree.add(label, AGREEMENT[2], norm)
        if overhead:
            agree.add(label, AGREEMENT[3], overhead)

    main.notes = [
        f"Mean ± sample std over seeds {list(seeds)}. Step time = 1 / results.json's "
        "steps_per_s: whole epochs over training steps, so it includes each epoch's evaluation "
        "and the first epoch's compilation. Ratios are taken per seed, then averaged.",
        "Timing arms ran without hypergradient logging." if diagnostic != "in_arms" else
        "Timing arms logged both hypergradients (--diagnostic=in_arms): their step times "
        "include one extra hypergradient per step."]
    agree.notes = [
        "Per run: the mean (and the smallest) over epochs of the per-epoch mean cosine; the norm "
        "ratio likewise. "
        + ("Measured in a separate exact run with mps.log_hypergrad_cosine=True; logging "
           "overhead = its step time / the exact arm's." if diagnostic == "separate" else
           "Measured in the exact timing arm.")]
    out_tables = [main] + ([agree] if diagnostic != "none" else [])
    paths = tables.write_report(workdir, "compare_hypergrad", out_tables, jobs,
                                header="Table 4")
    if diagnostic != "none":
        paths["per_epoch"] = os.path.join(workdir, "compare_hypergrad_per_epoch.csv")
        with open(paths["per_epoch"], "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["method", "seed", "epoch", "cosine", "norm_ratio_exact_over_fd"])
            writer.writerows(per_epoch)
    return {"tables": out_tables, "paths": paths, "jobs": jobs}


def define_flags(fv):
    flags.DEFINE_string("methods", ",".join(DEFAULT_METHODS), "MPS methods (mgr, gda_mps).",
                        flag_values=fv)
    flags.DEFINE_enum("diagnostic", "separate", DIAGNOSTICS, "Where the two hypergradients' "
                      "agreement is measured (see the module docstring).", flag_values=fv)


def kwargs_from_flags(fv):
    kwargs = cli.common_kwargs(fv)
    kwargs.update(methods=cli.parse_list(fv.methods), diagnostic=fv.diagnostic)
    return kwargs


if __name__ == "__main__":
    cli.main(sys.modules[__name__])
