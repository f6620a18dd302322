"""Table 7: updating the finder without meta-learning (maximising the synthetic loss).

    python -m mgr_jax.experiments.ablation_update --config=configs/cars.py \
        --workdir=results/table7 --lambda_file=results/lambda/chosen_lambda.json \
        [--variants=base,pcr,gda_mps,max_ce,max_pcr,mgr]

Rows (variant key: what changes against the base config):
  base     Base Model                              method=base
  pcr      PCR                                     method=pcr
  gda_mps  GDA+MPS (meta-learning)                 method=gda_mps, mps.finder_update=meta
  max_ce   Optimizing F w/ CE                      method=mgr, mps.finder_update=max_ce
  max_pcr  Optimizing F w/ PCR                     method=mgr, mps.finder_update=max_pcr
  mgr      MGR (meta-learning)                     method=mgr, mps.finder_update=meta
As in the paper, the classifier learns with PCR in both "w/ CE" and "w/ PCR" rows; only the
loss the finder maximises (CE or PCR of the classifier on x_p) differs.
"""
import sys

from mgr_jax.experiments import ablation, cli

VARIANTS = {
    "base": ("Base Model", {"method": "base"}),
    "pcr": ("PCR", {"method": "pcr"}),
    "gda_mps": ("GDA+MPS (meta-learning)", {"method": "gda_mps", "mps.finder_update": "meta"}),
    "max_ce": ("Optimizing F_φ w/ CE", {"method": "mgr", "mps.finder_update": "max_ce"}),
    "max_pcr": ("Optimizing F_φ w/ PCR", {"method": "mgr", "mps.finder_update": "max_pcr"}),
    "mgr": ("MGR (meta-learning)", {"method": "mgr", "mps.finder_update": "meta"}),
}
DEFAULT_VARIANTS = tuple(VARIANTS)


def run(config, workdir, *, seeds=(0, 1, 2), variants=DEFAULT_VARIANTS, runs_dir=None,
        lambda_map=None, trainer=None, dry_run=False):
    """Train the variants; writes ablation_update.md / .csv / _runs.csv. Returns
    {"table", "paths", "jobs"} (only "jobs" on a dry run)."""
    return ablation.variant_table(
        "ablation_update", "Table 7", "Updating strategies of F_φ, top-1 (%)", VARIANTS,
        variants, config, workdir,
        seeds=seeds, runs_dir=runs_dir, lambda_map=lambda_map, trainer=trainer, dry_run=dry_run)


def define_flags(fv):
    ablation.define_variant_flags(fv, DEFAULT_VARIANTS, VARIANTS)


def kwargs_from_flags(fv):
    return ablation.variant_kwargs_from_flags(fv, VARIANTS)


if __name__ == "__main__":
    cli.main(sys.modules[__name__])
