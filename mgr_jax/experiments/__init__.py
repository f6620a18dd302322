"""The paper's experiments as commands (docs/experiments.md):

    python -m mgr_jax.experiments.<command> --config=configs/default.py --workdir=DIR \
        [--seeds=0,1,2] [--config.x=value ...]

table1, sweep_lambda, compare_hypergrad, ablation_finder, ablation_update, augment, figures.
Each module exposes `run(config, workdir, ...)` (what the command does, callable from Python)
beside its command line; the shared grid, aggregation and table code is in `common`.
"""
