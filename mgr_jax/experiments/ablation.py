"""What the ablation commands (ablation_finder, ablation_update) share: one row per variant.

A variant is `key: (row label, config overrides)`; the table has the variants' test and val
top-1 (mean ± std over seeds) in two columns.
"""
from absl import flags

from mgr_jax.experiments import cli, runs, tables

COLUMNS = ("Test top-1 (%)", "Val top-1 (%)")


def variant_table(key, header, title, variants, chosen, config, workdir, *, seeds,
                  runs_dir=None, lambda_map=None, trainer=None, dry_run=False):
    """Run one row per variant key (`variants[key] = (label, overrides)`) x seeds and write a
    two-column table (test and val top-1, mean ± std) as `<key>.md` / `<key>.csv`."""
    jobs = [runs.make_job(config, variants[v][1], seed, row=variants[v][0], column="run",
                          lambda_map=lambda_map) for v in chosen for seed in seeds]
    if not runs.execute(jobs, workdir, runs_dir, trainer, dry_run, key):
        return {"jobs": jobs}
    table = tables.Table(key, title, "Method", list(COLUMNS), notes=[
        f"Mean ± sample std over seeds {list(seeds)} (best-validation epoch)."])
    for v in chosen:
        row = variants[v][0]
        table.add(row, COLUMNS[0], tables.cell_values(jobs, row, "run", "test_top1"))
        table.add(row, COLUMNS[1], tables.cell_values(jobs, row, "run", "val_top1"))
    paths = tables.write_report(workdir, key, [table], jobs, header=header)
    return {"table": table, "paths": paths, "jobs": jobs}


def define_variant_flags(fv, default_variants, variants):
    """The `--variants` flag of the ablation commands."""
    flags.DEFINE_string("variants", ",".join(default_variants),
                        f"Rows, from {list(variants)}.", flag_values=fv)


def variant_kwargs_from_flags(fv, variants):
    """The common kwargs plus the checked `--variants` list."""
    kwargs = cli.common_kwargs(fv)
    kwargs["variants"] = cli.parse_list(fv.variants)
    cli.check_choices(kwargs["variants"], variants, "variants")
    return kwargs
