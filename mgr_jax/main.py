"""Train and evaluate a classifier with one of the MGR methods.

    python -m mgr_jax.main --config=configs/default.py --workdir=runs/default \
        [--config.method=pcr] [--config.seed=1]

This file is kept short: the work is in `mgr_jax.train`, importable and testable.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mgr_jax import compile_cache, sharding, train
from mgr_jax.errors import TrainingDiverged, UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path of a get_config() file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (created; re-using it resumes the run).")
flags.DEFINE_integer("max_epochs_this_run", None, "Pause (resumably) after this many epochs.")
flags.DEFINE_string("compilation_cache", None,
                    f"Folder of JAX's persistent compilation cache ('off' turns it off; default "
                    f"${compile_cache.ENV_VAR} or {compile_cache.DEFAULT_DIR}).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
    compile_cache.enable(FLAGS.compilation_cache)
    try:
        sharding.maybe_initialize_distributed(FLAGS.config)
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.max_epochs_this_run)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as e:
        print(f"error: the loss became NaN/inf at step {e.args[0]}; stopped. The last good "
              f"checkpoint is in {FLAGS.workdir}/checkpoints/latest (lower optimizer.lr or "
              "lambda and resume with a new workdir)", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    app.run(main)
