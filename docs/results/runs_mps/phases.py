"""Per-phase meta-descent of the finished MGR runs in a runs directory (issue 20's README)."""
import glob
import json
import sys

import numpy as np

RUNS = sys.argv[1] if len(sys.argv) > 1 else "results/runs_mps"
GROUPS = {
    "paper setting (lr 1e-4), seed 0": "digits-mgr-s0-mps.log_meta_descent=True-*",
    "chosen (lr 1e-3), k=1": "digits-mgr-s*-mps.finder_lr=0.001-mps.log_meta_descent=True-??????????",
    "chosen, k=4": "digits-mgr-s*-mps.finder_lr=0.001-mps.log_meta_descent=True-mps.update_every=4-*",
    "chosen, k=16": "digits-mgr-s*-mps.finder_lr=0.001-mps.log_meta_descent=True-mps.update_every=16-*",
    "lr 1e-3 β 0.5/0.9, seed 0": "digits-mgr-s0-mps.finder_b1=0.5-mps.finder_b2=0.9-mps.finder_lr=0.001-*",
    "finite difference, chosen, k=1": "digits-mgr-s*-mps.finder_lr=0.001-mps.hypergradient=finite_difference-*",
}


def epochs(run):
    with open(f"{run}/metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if r.get("kind") == "epoch"]


def column(runs, key):
    """(runs, epochs); NaN in epochs without a meta-update (update_every > steps per epoch)."""
    return np.array([[r.get(key, np.nan) for r in epochs(d)] for d in runs], float)


def first_last(a):
    """Mean over runs of the first and the last epoch that logged the key."""
    got = [row[~np.isnan(row)] for row in a]
    return np.mean([g[0] for g in got]), np.mean([g[-1] for g in got])


print("| runs | n | descending % epochs 1-10 | 11-25 | 26-50 | mean ΔM epochs 1-10 | 26-50 | "
      "hypergradient norm, first epoch | last | latent displacement, last epoch |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name, pattern in GROUPS.items():
    runs = sorted(d for d in glob.glob(f"{RUNS}/{pattern}") if glob.glob(f"{d}/results.json")
                  and ("finder_b1" in pattern) == ("finder_b1" in d))
    if not runs:
        continue
    down, change = column(runs, "meta_descended"), column(runs, "meta_descent")
    norm, disp = column(runs, "hypergrad_norm"), column(runs, "latent_displacement")
    pct = lambda a, b: 100 * np.nanmean(down[:, a:b])  # noqa: E731
    print(f"| {name} | {len(runs)} | {pct(0, 10):.0f} | {pct(10, 25):.0f} | {pct(25, 50):.0f} | "
          f"{np.nanmean(change[:, :10]):.1e} | {np.nanmean(change[:, 25:]):.1e} | "
          "{:.2g} | {:.2g} | ".format(*first_last(norm)) + f"{np.mean(disp[:, -1]):.3f} |")
