"""Table 3: real-data augmentation (rows) x method (columns), test top-1 mean ± std.

    python -m mgr_jax.experiments.augment --config=configs/cars.py --workdir=results/table3 \
        --lambda_file=results/lambda/chosen_lambda.json \
        [--augments=none,augmix,randaugment,trivialaugment] [--methods=base,mgr]

data.augment is applied to the real batches only (mgr_jax/data/real_augment.py, torchvision's
settings); the synthetic samples keep their own strong augmentation T.
"""
import sys

from absl import flags

from mgr_jax.experiments import cli, runs, tables
from mgr_jax.run import config_lib

AUGMENT_LABELS = {"none": "None", "augmix": "AugMix", "randaugment": "RandAugment",
                  "trivialaugment": "TrivialAugment"}
DEFAULT_AUGMENTS = tuple(AUGMENT_LABELS)
DEFAULT_METHODS = ("base", "mgr")


def method_column(method):
    """"Base Model" for base, "+MGR" etc. for the others (Table 3's headers)."""
    if method == "base":
        return tables.TABLE_LABELS["base"]
    return "+" + {"mgr": "MGR"}.get(method, tables.TABLE_LABELS[method])


def run(config, workdir, *, seeds=(0, 1, 2), augments=DEFAULT_AUGMENTS, methods=DEFAULT_METHODS,
        runs_dir=None, lambda_map=None, trainer=None, dry_run=False):
    """Train the grid; writes augment.md / augment.csv / augment_runs.csv. Returns
    {"table", "paths", "jobs"} (only "jobs" on a dry run)."""
    jobs = [runs.make_job(config, {"method": m, "data.augment": a}, seed,
                          row=AUGMENT_LABELS[a], column=method_column(m),
                          lambda_map=lambda_map)
            for a in augments for m in methods for seed in seeds]
    if not runs.execute(jobs, workdir, runs_dir, trainer, dry_run, "augment"):
        return {"jobs": jobs}
    table = tables.Table(
        "augment", "MGR and real-data augmentation, test top-1 (%)",
        "Data Augmentation", [method_column(m) for m in methods],
        notes=[f"Mean ± sample std over seeds {list(seeds)}."])
    tables.fill_table(table, jobs)
    paths = tables.write_report(workdir, "augment", [table], jobs, header="Table 3")
    return {"table": table, "paths": paths, "jobs": jobs}


def define_flags(fv):
    flags.DEFINE_string("augments", ",".join(DEFAULT_AUGMENTS), "Rows: data.augment values.",
                        flag_values=fv)
    flags.DEFINE_string("methods", ",".join(DEFAULT_METHODS), "Columns: methods.",
                        flag_values=fv)


def kwargs_from_flags(fv):
    kwargs = cli.common_kwargs(fv)
    kwargs.update(augments=cli.parse_list(fv.augments), methods=cli.parse_list(fv.methods))
    cli.check_choices(kwargs["methods"])
    cli.check_choices(kwargs["augments"], config_lib.AUGMENTS, "augments")
    return kwargs


if __name__ == "__main__":
    cli.main(sys.modules[__name__])
