"""The paired table's statistics again, from the committed per-seed results (paired_runs.csv):
the Wilcoxon signed-rank test with tied |differences| ranked as ties, Holm's correction over
the three MGR arms tested against PCR, and the design's power.

    python docs/results/paired/restats.py > docs/results/paired/restats.md

Power: the smallest MGR - PCR difference a two-sided paired t-test at 5 % detects with 80 %
power, (t_{0.975, n-1} + t_{0.80, n-1}) * sd(d) / sqrt(n), with sd(d) the arm's observed one.
"""
import csv
import math
import os
import sys

from scipy import stats as scipy_stats

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
from mgr_jax.experiments import stats  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    with open(os.path.join(HERE, "paired_runs.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r["status"] in ("done", "ran")]  # finished
    arms = {}
    for r in rows:
        arms.setdefault(r["row"], {})[int(r["seed"])] = float(r["test_top1"])
    pcr = arms.pop("PCR")
    names = sorted(arms)
    comparisons = []
    for name in names:
        seeds = sorted(set(pcr) & set(arms[name]))
        comparisons.append((name, seeds, stats.paired_comparison(
            [pcr[s] for s in seeds], [arms[name][s] for s in seeds])))
    adjusted = stats.holm([c.wilcoxon_pvalue for _, _, c in comparisons])
    adjusted_t = stats.holm([c.t_pvalue for _, _, c in comparisons])
    print("| Arm | n | MGR - PCR | 95 % CI | t-test p (Holm) | Wilcoxon p, ties (Holm) | "
          "detectable at 80 % power |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (name, seeds, c), p_w, p_t in zip(comparisons, adjusted, adjusted_t):
        n = len(seeds)
        mde = (scipy_stats.t.ppf(0.975, n - 1) + scipy_stats.t.ppf(0.80, n - 1)) \
            * c.diff.std / math.sqrt(n)
        print(f"| {name} | {n} | {c.diff.mean:+.2f} | [{c.ci_low:.2f}, {c.ci_high:.2f}] | "
              f"{c.t_pvalue:.3f} ({p_t:.3f}) | {c.wilcoxon_pvalue:.3f} ({p_w:.3f}) | "
              f"{mde:.2f} |")


if __name__ == "__main__":
    main()
