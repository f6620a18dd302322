"""Table 1: test top-1 of methods (rows) x datasets or subset sizes (columns), mean ± std.

    python -m mgr_jax.experiments.table1 --config=configs/cars.py --workdir=results/table1a \
        --configs=configs/cars.py,configs/aircraft.py,configs/birds.py,configs/dtd.py,\
configs/flowers.py,configs/pets.py --lambda_file=results/lambda/chosen_lambda.json
    python -m mgr_jax.experiments.table1 --config=configs/cars.py --workdir=results/table1b \
        --subset_fractions=0.1,0.25,0.5,0.75 --methods=base,gda,gda_mh,gda_ssl,mgr \
        --generator_checkpoints=g10,g25,g50,g75

Each column is a base config (--config, or each of --configs) with the --config.x overrides
applied, times each of --subset_fractions when given. The paper trains a generator on each
reduced dataset: --generator_checkpoints gives one per column, in column order.
"""
import sys

from absl import flags

from mgr_jax.errors import UserError
from mgr_jax.experiments import cli, runs, tables
from mgr_jax.run import config_lib

DEFAULT_METHODS = config_lib.METHODS


def make_columns(config, configs=None, subset_fractions=None, generator_checkpoints=None):
    """[(label, base config, overrides)] of the table's columns, in order."""
    bases = list(configs) if configs else [config]
    columns = []
    for base in bases:
        label = tables.DATASET_LABELS.get(base.data.name, base.data.name)
        if subset_fractions:
            for fraction in subset_fractions:
                size = f"{100 * fraction:g}%"
                columns.append((f"{label} {size}" if len(bases) > 1 else size, base,
                                {"data.subset_fraction": float(fraction)}))
        else:
            columns.append((label, base, {}))
    if generator_checkpoints:
        if len(generator_checkpoints) != len(columns):
            raise UserError(f"--generator_checkpoints has {len(generator_checkpoints)} entries "
                            f"but the table has {len(columns)} columns "
                            f"({[c[0] for c in columns]})")
        columns = [(label, base, dict(ov, **{"generator.checkpoint": ckpt}))
                   for (label, base, ov), ckpt in zip(columns, generator_checkpoints)]
    seen = {}
    unique = []
    for label, base, ov in columns:  # two configs of one dataset: number the labels
        seen[label] = seen.get(label, 0) + 1
        unique.append((label if seen[label] == 1 else f"{label} ({seen[label]})", base, ov))
    return unique


def run(config, workdir, *, seeds=(0, 1, 2), methods=DEFAULT_METHODS, configs=None,
        subset_fractions=None, generator_checkpoints=None, runs_dir=None, lambda_map=None,
        trainer=None, dry_run=False):
    """Train the grid and write table1.md / table1.csv / table1_runs.csv into `workdir`.

    Returns {"table": Table, "paths": {...}, "jobs": [...]} (no table on a dry run).
    """
    columns = make_columns(config, configs, subset_fractions, generator_checkpoints)
    jobs = [runs.make_job(base, dict(ov, method=m), seed, row=tables.TABLE_LABELS[m],
                          column=label, lambda_map=lambda_map)
            for m in methods for label, base, ov in columns for seed in seeds]
    if not runs.execute(jobs, workdir, runs_dir, trainer, dry_run, "table1"):
        return {"jobs": jobs}
    table = tables.Table(
        "table1", "Top-1 accuracy (%) on the test split", "Method / Dataset",
        [c[0] for c in columns], highlight="max",
        baseline_row=tables.TABLE_LABELS["base"] if "base" in methods else None,
        notes=[f"Mean ± sample std over seeds {list(seeds)} of the best-validation epoch's "
               "test top-1. **Bold**: best in the column; <u>underlined</u>: above Base Model."])
    tables.fill_table(table, jobs)
    paths = tables.write_report(workdir, "table1", [table], jobs, header="Table 1")
    return {"table": table, "paths": paths, "jobs": jobs}


def define_flags(fv):
    flags.DEFINE_string("methods", ",".join(DEFAULT_METHODS), "Rows: comma-separated methods.",
                        flag_values=fv)
    flags.DEFINE_string("configs", "", "Columns: comma-separated config files (default: "
                        "--config alone); the --config.x overrides apply to each.",
                        flag_values=fv)
    flags.DEFINE_string("subset_fractions", "", "Columns: data.subset_fraction values "
                        "(Table 1b: 0.1,0.25,0.5,0.75), per config.", flag_values=fv)
    flags.DEFINE_string("generator_checkpoints", "", "One generator.checkpoint per column, in "
                        "column order (the paper's per-subset generators).", flag_values=fv)


def kwargs_from_flags(fv):
    kwargs = cli.common_kwargs(fv)
    overrides = cli.config_overrides(fv)
    kwargs.update(
        methods=cli.parse_list(fv.methods),
        configs=[cli.load_config_file(p, overrides) for p in cli.parse_list(fv.configs)]
        or None,
        subset_fractions=cli.parse_list(fv.subset_fractions, float) or None,
        generator_checkpoints=cli.parse_list(fv.generator_checkpoints) or None)
    cli.check_choices(kwargs["methods"])
    return kwargs


if __name__ == "__main__":
    cli.main(sys.modules[__name__])
