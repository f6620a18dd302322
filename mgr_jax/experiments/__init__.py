"""The paper's experiments as commands (docs/experiments.md):

    python -m mgr_jax.experiments.<command> --config=configs/default.py --workdir=DIR \
        [--seeds=0,1,2] [--config.x=value ...]

table1, sweep_lambda, compare_hypergrad, ablation_finder, ablation_update, augment, figures.
Each module exposes `run(config, workdir, ...)` (what the command does, callable from Python)
beside its command line. What they share: `runs` (configs -> named jobs -> trained runs),
`tables` (mean ± std tables, reports), `cli` (common flags, the entry point) and `ablation`
(the ablation commands' variant table); the figures command adds `probe` (a run's features),
`snapshots` (per-epoch features between training pieces) and `plots` (matplotlib).
Imports run one way: commands -> shared modules -> the library, which never imports this
package.
"""
