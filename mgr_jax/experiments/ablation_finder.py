"""Table 5: ablation of MPS's finder (architecture, KL penalty, meta-optimising G instead).

    python -m mgr_jax.experiments.ablation_finder --config=configs/cars.py \
        --workdir=results/table5 --lambda_file=results/lambda/chosen_lambda.json \
        [--variants=pcr,mps,generator,linear,mlp,residual_shallow,no_kl]

Rows (variant key: what changes against the base config):
  pcr               Without MPS (PCR)                 method=pcr
  mps               MPS                               method=mgr, finder.arch=residual,
                                                      mps.meta_target=finder
  generator         MPS with G (meta-optimise G)      method=mgr, mps.meta_target=generator
  linear            MPS with Linear F                 method=mgr, finder.arch=linear
  mlp               MPS with MLP F                    method=mgr, finder.arch=mlp
  residual_shallow  MPS with Residual+Shallow F       method=mgr, finder.arch=residual_shallow
  no_kl             MPS w/o KL                        method=mgr, mps.kl_weight=0
The KL weight of the other MPS rows is the base config's mps.kl_weight (0.01 by default).
"""
import sys

from mgr_jax.experiments import ablation, cli

_MPS = {"method": "mgr", "finder.arch": "residual", "mps.meta_target": "finder",
        "mps.finder_update": "meta"}
VARIANTS = {
    "pcr": ("Without MPS (PCR)", {"method": "pcr"}),
    "mps": ("MPS", dict(_MPS)),
    "generator": ("MPS with G_Φ", dict(_MPS, **{"mps.meta_target": "generator"})),
    "linear": ("MPS with Linear F_φ", dict(_MPS, **{"finder.arch": "linear"})),
    "mlp": ("MPS with MLP F_φ", dict(_MPS, **{"finder.arch": "mlp"})),
    "residual_shallow": ("MPS with Residual+Shallow F_φ",
                         dict(_MPS, **{"finder.arch": "residual_shallow"})),
    "no_kl": ("MPS w/o D_KL", dict(_MPS, **{"mps.kl_weight": 0.0})),
}
DEFAULT_VARIANTS = tuple(VARIANTS)


def run(config, workdir, *, seeds=(0, 1, 2), variants=DEFAULT_VARIANTS, runs_dir=None,
        lambda_map=None, trainer=None, dry_run=False):
    """Train the variants; writes ablation_finder.md / .csv / _runs.csv. Returns
    {"table", "paths", "jobs"} (only "jobs" on a dry run)."""
    return ablation.variant_table(
        "ablation_finder", "Table 5", "Ablation study of MPS, top-1 (%)", VARIANTS, variants,
        config, workdir,
        seeds=seeds, runs_dir=runs_dir, lambda_map=lambda_map, trainer=trainer, dry_run=dry_run)


def define_flags(fv):
    ablation.define_variant_flags(fv, DEFAULT_VARIANTS, VARIANTS)


def kwargs_from_flags(fv):
    return ablation.variant_kwargs_from_flags(fv, VARIANTS)


if __name__ == "__main__":
    cli.main(sys.modules[__name__])
