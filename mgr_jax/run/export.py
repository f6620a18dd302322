"""A finished run's classifier as a weights directory that `model.init_checkpoint` loads.

    python -m mgr_jax.run.export --workdir=runs/upstream --out=weights/upstream [--which=best]

Pretraining and transfer: train on an upstream task (e.g. Fashion-MNIST classes 0-4,
`configs/fashion_upstream.py`), export its best-validation checkpoint, then start the
downstream task from it (`--config.model.init_checkpoint=weights/upstream`); the downstream
run gets a fresh classifier head (`model.fresh_head`, on by default) and keeps everything else.
The directory is `variables_io`'s (meta.json + variables/), the form converted torchvision
weights take; its meta.json says which run, task and epoch it came from.
"""
import argparse
import os
import sys

import ml_collections

from mgr_jax import files, variables_io
from mgr_jax.errors import UserError
from mgr_jax.run import train
from mgr_jax.run import workdir as workdir_lib

WHICH = ("best", "latest")


def export(workdir, out, which="best"):
    """Write the classifier of `workdir`'s `which` checkpoint to `out`; returns its meta."""
    saved = workdir_lib.read_config(workdir) if os.path.isdir(workdir) else None
    if saved is None:
        raise UserError(f"--workdir={workdir} holds no run (no config.json); give the workdir "
                        "of a training run")
    if which not in WHICH:
        raise UserError(f"--which={which!r} is not valid; choose one of {list(WHICH)}")
    if os.path.lexists(out) and not variables_io.is_variables_dir(out):
        raise UserError(f"--out={out} exists and is not a weights directory; give a new path")
    config = ml_collections.ConfigDict(saved)
    state = train.restore_state(config, workdir, which=which)
    results_path = os.path.join(workdir, "results.json")
    results = files.read_json(results_path) if os.path.exists(results_path) else {}
    meta = {"kind": "classifier", "arch": config.model.arch, "width": config.model.width,
            "cifar_stem": config.model.cifar_stem, "image_size": config.data.image_size,
            "source_workdir": os.path.abspath(workdir), "checkpoint": which,
            "step": int(state.step), "data": config.data.name,
            "classes": list(config.data.get("classes", ())),
            "val_top1": results.get("val_top1"), "best_epoch": results.get("best_epoch")}
    variables_io.save_variables(out, {"params": state.params,
                                      "batch_stats": state.batch_stats}, meta)
    return meta


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mgr_jax.run.export",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="the training run to export")
    parser.add_argument("--out", required=True, help="the weights directory to write (new, "
                        "or a weights directory to replace)")
    parser.add_argument("--which", default="best", choices=WHICH,
                        help="the best-validation or the latest checkpoint")
    args = parser.parse_args(argv)
    try:
        meta = export(args.workdir, args.out, args.which)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {meta['arch']} from {args.workdir} ({args.which} checkpoint, step "
          f"{meta['step']}); start a run from it with --config.model.init_checkpoint="
          f"{args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
