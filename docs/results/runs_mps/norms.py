"""The hypergradient norm and the meta-descent of the chosen k=1 MGR runs, by epoch range, from
their logged epoch means (issue 26's audit of the README's "goes flat" reading).

    python docs/results/runs_mps/norms.py docs/results/runs_mps

hypergrad_norm includes the KL term's gradient (0.01 * grad KL); the ΔM share of epoch 1 is
the part of the whole run's summed mean ΔM (one value per epoch) that epoch 1 contributes.
"""
import glob
import json
import sys

import numpy as np

RUNS = sys.argv[1] if len(sys.argv) > 1 else "results/runs_mps"
PATTERN = "digits-mgr-s*-mps.finder_lr=0.001-mps.log_meta_descent=True-??????????"


def column(run, key):
    with open(f"{run}/metrics.jsonl") as f:
        return np.array([r.get(key, np.nan) for r in map(json.loads, f)
                         if r.get("kind") == "epoch"], float)


runs = sorted(r for r in glob.glob(f"{RUNS}/{PATTERN}") if "finder_b1" not in r)
norms = np.array([column(r, "hypergrad_norm") for r in runs])
descent = np.array([column(r, "meta_descent") for r in runs])
lr = column(runs[0], "lr")
print(f"{len(runs)} runs (seeds), {norms.shape[1]} epochs; lr by epoch changes at epochs "
      f"{[int(e) + 1 for e in np.nonzero(np.diff(lr))[0] + 1]}")
for lo, hi in [(1, 1), (2, 8), (9, 25), (26, 50), (50, 50)]:
    print(f"epochs {lo}-{hi}: hypergradient norm {np.nanmean(norms[:, lo - 1:hi]):.3g}, "
          f"mean ΔM per update {np.nanmean(descent[:, lo - 1:hi]):.3g}")
total = np.nansum(descent, axis=1)
print(f"summed mean ΔM over the run {np.mean(total):.3g}, epoch 1's share "
      f"{np.mean(descent[:, 0] / total):.1%} (per-seed range {np.min(descent[:, 0] / total):.1%}-"
      f"{np.max(descent[:, 0] / total):.1%})")
