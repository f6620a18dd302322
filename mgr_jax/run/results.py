"""The run's final `results.json`: the SPEC's keys plus what a reader needs to trust them."""
import os

from mgr_jax import files


def write_results(workdir, config, pipeline, loop, write=True):
    """Write and print results.json for a finished run (only make the dict with `write=False`:
    the non-zero processes of a multi-host run); returns the dict."""
    results = {
        "method": config.method,
        "dataset": pipeline.name,
        "seed": int(config.seed),
        "best_epoch": int(loop["best_epoch"]),
        "val_top1": round(float(loop["best_val_top1"]), 4),
        "test_top1": round(float(loop["best_test_top1"]), 4),
        "wall_clock_s": round(float(loop["elapsed_s"]), 2),
        "steps_per_s": round(loop["steps"] / max(loop["elapsed_s"], 1e-9), 3),
        "num_epochs": int(config.num_epochs),
        "split_sizes": pipeline.split_sizes(),
        "lambda": float(config.lambda_),
    }
    if "mps" in config:
        results["hypergradient"] = config.mps.hypergradient
    if not write:
        return results
    files.write_json(os.path.join(workdir, "results.json"), results)
    print(f"best validation epoch {results['best_epoch']}: val top-1 {results['val_top1']:.2f} %, "
          f"test top-1 {results['test_top1']:.2f} % ({results['wall_clock_s']:.0f} s)", flush=True)
    return results
