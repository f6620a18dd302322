"""The regime figures of setting A from the committed runs: best-validation epochs (and so the
finder updates the chosen MGR models had), the finder's gradient norms by phase (meta term
without KL, the KL term's), its latent displacement, and each arm's wall-clock per run.

    python docs/results/fmnist_transfer/regime.py > docs/results/fmnist_transfer/regime.txt
"""
import glob
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS_PER_EPOCH = 5  # 100 images of D in batches of 20
ARMS = {"base": "fashion_mnist-base-s*", "PCR": "fashion_mnist-pcr-s*-lambda_=0.1-*",
        "MGR": "fashion_mnist-mgr-s*-lambda_=0.1-mps.normalize_hypergrad=True-??????????",
        "MGR (FD)": "fashion_mnist-mgr-s*-lambda_=0.1-mps.hypergradient=finite_difference-*"}


def runs(pattern):
    """{seed: (results, train records)} of the evaluation seeds (0-19) finished."""
    out = {}
    for d in glob.glob(os.path.join(HERE, "runs", pattern)):
        path = os.path.join(d, "results.json")
        if not os.path.exists(path):
            continue
        results = json.load(open(path))
        if results["seed"] >= 100:  # the choice runs
            continue
        with open(os.path.join(d, "metrics.jsonl")) as f:
            train = [r for r in map(json.loads, f) if r.get("kind") == "train"]
        out[results["seed"]] = (results, train)
    return out


def by_epochs(train, key, lo, hi):
    return [r[key] for r in train if lo <= r["epoch"] <= hi and key in r]


def main():
    for arm, pattern in ARMS.items():
        found = runs(pattern)
        if not found:
            continue
        best = sorted(r["best_epoch"] for r, _ in found.values())
        wall = [r["wall_clock_s"] for r, _ in found.values()]
        print(f"{arm}: {len(found)} runs; best-validation epochs {best} (median "
              f"{np.median(best):g}); wall-clock per run {np.mean(wall):.0f} s (range "
              f"{min(wall):.0f}-{max(wall):.0f})")
        if not arm.startswith("MGR"):
            continue
        print(f"  finder updates before the chosen epoch: median {np.median(best) * STEPS_PER_EPOCH:g}"
              f" (range {best[0] * STEPS_PER_EPOCH}-{best[-1] * STEPS_PER_EPOCH}) of 150")
        for key in ("meta_grad_norm", "kl_grad_norm"):
            first = [t[0][key] for _, t in found.values()]
            phases = {f"{lo}-{hi}": np.median([np.median(by_epochs(t, key, lo, hi))
                                               for _, t in found.values()])
                      for lo, hi in ((2, 10), (11, 20), (21, 30))}
            print(f"  {key}: step 1 median {np.median(first):.3g}; per-step median by epochs "
                  + ", ".join(f"{k}: {v:.3g}" for k, v in phases.items()))
        ratio = [t[0]["meta_grad_norm"] / np.median(by_epochs(t, "meta_grad_norm", 2, 10))
                 for _, t in found.values()]
        print(f"  first meta-step / median of epochs 2-10: median {np.median(ratio):.1f} "
              f"(range {min(ratio):.1f}-{max(ratio):.1f})")
        # The digits runs (README setting B) logged epoch means only: the same measure here.
        epoch1 = [np.mean(by_epochs(t, "hypergrad_norm", 1, 1)) for _, t in found.values()]
        later = [np.mean(by_epochs(t, "hypergrad_norm", 2, 10)) for _, t in found.values()]
        print(f"  hypergrad_norm (with KL) epoch 1 mean / epochs 2-10 mean: "
              f"{np.mean(epoch1):.3g} / {np.mean(later):.3g} = "
              f"{np.mean(epoch1) / np.mean(later):.1f}")
        disp = [t[-1]["latent_displacement"] for _, t in found.values()]
        print(f"  latent displacement ||F(z) - z|| at the last step: mean {np.mean(disp):.3f}")


if __name__ == "__main__":
    main()
