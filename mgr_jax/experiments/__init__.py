"""The paper's experiments as commands (docs/experiments.md):

    python -m mgr_jax.experiments.<command> --config=configs/default.py --workdir=DIR \
        [--seeds=0,1,2] [--config.x=value ...]

table1, sweep_lambda, compare_hypergrad, ablation_finder, ablation_update, augment, figures;
and whether MPS does its job: sweep_finder (the finder optimiser chosen on D_val) and paired
(PCR vs MGR over many seeds, paired by seed, with mps.update_every arms).
Each module exposes `run(config, workdir, ...)` (what the command does, callable from Python)
beside its command line. What they share: `runs` (configs -> named jobs -> trained runs),
`tables` (mean ± std tables, reports), `cli` (common flags, the entry point) and `ablation`
(the ablation commands' variant table), `stats` (paired statistics); the figures command adds `probe` (a run's features),
`snapshots` (per-epoch features between training pieces) and `plots` (matplotlib).
Imports run one way: commands -> shared modules -> the library, which never imports this
package.
"""
