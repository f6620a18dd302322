"""lambda chosen on D_val (paper section 4.1), then the final seeds with the chosen value.

    python -m mgr_jax.experiments.sweep_lambda --config=configs/cars.py --workdir=results/lambda \
        --methods=gda,gda_mh,gda_ssl,gda_mps,pcr,mgr [--lambdas=0.1,0.2,...,1.0] [--sweep_seed=0]

1. Each method trains once per lambda of the grid at --sweep_seed; the lambda with the best
   validation top-1 (best-validation epoch) is chosen, ties going to the smaller lambda.
   As the paper does, the MPS methods are not swept with meta-learning: MGR takes PCR's lambda
   and GDA+MPS takes GDA's (--nomps_from_uniform sweeps them on their own).
   `base` has no lambda and is only trained at the final seeds.
2. Every method trains at each of --seeds with its chosen lambda (the sweep run at the same
   seed and lambda is reused).
Writes sweep_lambda.md, sweep_lambda.csv (validation top-1 per lambda), sweep_lambda_final.csv
(chosen lambda, final val and test top-1), sweep_lambda_runs.csv and chosen_lambda.json, which
the other commands take as --lambda_file.
"""
import math
import os
import sys

from absl import flags

from mgr_jax.errors import UserError
from mgr_jax.experiments import cli, runs, tables
from mgr_jax.files import write_json

DEFAULT_METHODS = ("gda", "gda_mh", "gda_ssl", "gda_mps", "pcr", "mgr")
DEFAULT_LAMBDAS = tuple(round(0.1 * i, 1) for i in range(1, 11))


def swept_method(method, mps_from_uniform=True):
    """The method whose sweep chooses `method`'s lambda (None: no lambda)."""
    if method == "base":
        return None
    return runs.UNIFORM_OF.get(method, method) if mps_from_uniform else method


def choose_lambda(val_by_lambda):
    """The lambda with the best validation top-1 (NaN = failed run skipped; ties: smaller)."""
    finite = {lam: v for lam, v in val_by_lambda.items() if math.isfinite(v)}
    if not finite:
        return None
    best = max(finite.values())
    return min(lam for lam, v in finite.items() if v == best)


def _lambda_label(lam):
    return f"λ={lam:g}"


def run(config, workdir, *, seeds=(0, 1, 2), methods=DEFAULT_METHODS, lambdas=DEFAULT_LAMBDAS,
        sweep_seed=0, mps_from_uniform=True, runs_dir=None, lambda_map=None, trainer=None,
        dry_run=False):
    """Sweep, choose, train the final seeds; writes the tables and chosen_lambda.json.

    Returns {"chosen": {method: lambda}, "tables": [...], "paths": {...}, "jobs": [...]}.
    """
    if lambda_map:
        raise UserError("sweep_lambda chooses lambda itself; drop --lambda_file")
    lambdas = sorted(float(x) for x in lambdas)
    swept = []
    for m in methods:
        target = swept_method(m, mps_from_uniform)
        if target is not None and target not in swept:
            swept.append(target)
    sweep_jobs = [runs.make_job(config, {"method": m, "lambda": lam}, sweep_seed,
                                row=tables.TABLE_LABELS[m], column=_lambda_label(lam))
                  for m in swept for lam in lambdas]
    if not runs.execute(sweep_jobs, workdir, runs_dir, trainer, dry_run,
                        "sweep_lambda (sweep)"):
        print("(the final runs depend on the sweep's choice and are listed once it is done)")
        return {"jobs": sweep_jobs}

    chosen_swept = {}
    sweep_table = tables.Table(
        "sweep_lambda", f"Validation top-1 (%) per lambda (seed {sweep_seed})", "Method",
        [_lambda_label(lam) for lam in lambdas])
    for m in swept:
        vals = {}
        for lam in lambdas:
            job = next(j for j in sweep_jobs if j.config.method == m
                       and runs.get_lambda(j.config) == lam)
            vals[lam] = job.value("val_top1")
            sweep_table.add(tables.TABLE_LABELS[m], _lambda_label(lam), [vals[lam]])
        chosen_swept[m] = choose_lambda(vals)
    chosen = {m: chosen_swept[swept_method(m, mps_from_uniform)] for m in methods
              if m != "base"}

    final_jobs = []
    for m in methods:
        if m != "base" and chosen[m] is None:
            print(f"no lambda could be chosen for {m}: every sweep run failed", flush=True)
            continue
        overrides = {"method": m} if m == "base" else {"method": m, "lambda": chosen[m]}
        final_jobs += [runs.make_job(config, overrides, seed, row=tables.TABLE_LABELS[m],
                                     column="final") for seed in seeds]
    runs.execute(final_jobs, workdir, runs_dir, trainer, False, "sweep_lambda (final seeds)")

    final = tables.Table("sweep_lambda_final", f"Chosen lambda and final top-1 (%), seeds "
                         f"{list(seeds)}", "Method", ["chosen λ", "Val top-1", "Test top-1"])
    for m in methods:
        row = tables.TABLE_LABELS[m]
        if m != "base" and chosen[m] is None:
            continue
        final.add(row, "chosen λ", [chosen[m]] if m != "base" else [])
        final.add(row, "Val top-1", tables.cell_values(final_jobs, row, "final", "val_top1"))
        final.add(row, "Test top-1", tables.cell_values(final_jobs, row, "final"))
    notes = [f"lambda chosen by the best validation top-1 at seed {sweep_seed}"
             + ("; MGR uses PCR's and GDA+MPS uses GDA's lambda (paper section 4.1)."
                if mps_from_uniform else ".")]
    final.notes = notes
    chosen_out = {m: lam for m, lam in chosen.items() if lam is not None}
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, "chosen_lambda.json"), chosen_out)
    jobs = sweep_jobs + final_jobs
    paths = tables.write_report(workdir, "sweep_lambda", [sweep_table, final], jobs,
                                header="lambda sweep")
    paths["chosen"] = os.path.join(workdir, "chosen_lambda.json")
    return {"chosen": chosen_out, "tables": [sweep_table, final], "paths": paths, "jobs": jobs}


def define_flags(fv):
    flags.DEFINE_string("methods", ",".join(DEFAULT_METHODS), "Comma-separated methods.",
                        flag_values=fv)
    flags.DEFINE_string("lambdas", ",".join(f"{x:g}" for x in DEFAULT_LAMBDAS),
                        "The lambda grid.", flag_values=fv)
    flags.DEFINE_integer("sweep_seed", 0, "Seed of the sweep runs.", flag_values=fv)
    flags.DEFINE_boolean("mps_from_uniform", True, "MGR takes PCR's lambda and GDA+MPS takes "
                         "GDA's, as in the paper (no meta-learning in the sweep).",
                         flag_values=fv)


def kwargs_from_flags(fv):
    kwargs = cli.common_kwargs(fv)
    kwargs.update(methods=cli.parse_list(fv.methods),
                  lambdas=cli.parse_list(fv.lambdas, float), sweep_seed=fv.sweep_seed,
                  mps_from_uniform=fv.mps_from_uniform)
    cli.check_choices(kwargs["methods"])
    if not kwargs["lambdas"]:
        raise UserError("--lambdas is empty")
    return kwargs


if __name__ == "__main__":
    cli.main(sys.modules[__name__])
