"""Paired comparison of two arms over seeds: summaries, the paired difference, its CI, tests.

Seed s of arm a and seed s of arm b share the data order and the initialisation, so the
numbers are compared as pairs: the difference d_s = b_s - a_s carries the effect, without the
spread that both arms share. Pure functions of plain numbers; a pair with a NaN in either arm
(a failed run) is dropped from the paired statistics, and each arm's summary keeps its own
finite values.
"""
import dataclasses
import math

import numpy as np
from scipy import stats as scipy_stats

from mgr_jax.experiments import tables

# Up to this many non-zero differences the Wilcoxon p-value is exact (all 2^n sign patterns).
EXACT_WILCOXON_MAX_N = 25


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1; NaN below two values) and count."""
    mean: float
    std: float
    n: int


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """Arm b against arm a over the seeds both finished (d = b - a)."""
    a: Summary
    b: Summary
    n: int  # pairs
    diff: Summary  # of d
    ci_low: float  # `confidence` t interval of the mean of d
    ci_high: float
    confidence: float
    t_stat: float  # paired t-test (two-sided)
    t_pvalue: float
    wilcoxon_stat: float  # signed-rank test (two-sided): min(W+, W-)
    wilcoxon_pvalue: float

    def as_dict(self):
        out = {"n": self.n, "confidence": self.confidence}
        for name in ("a", "b", "diff"):
            s = getattr(self, name)
            out.update({f"{name}_mean": s.mean, f"{name}_std": s.std, f"{name}_n": s.n})
        out.update(ci_low=self.ci_low, ci_high=self.ci_high, t_stat=self.t_stat,
                   t_pvalue=self.t_pvalue, wilcoxon_stat=self.wilcoxon_stat,
                   wilcoxon_pvalue=self.wilcoxon_pvalue)
        return out


def _finite(values):
    v = np.asarray([float(x) for x in values if x is not None], np.float64)
    return v[np.isfinite(v)]


def summarize(values):
    """Summary of the finite values (`tables.mean_std`)."""
    return Summary(*tables.mean_std(values))


def t_interval(diffs, confidence=0.95):
    """(low, high): mean(d) -+ t_{(1 + confidence) / 2, n - 1} * std(d) / sqrt(n)."""
    d = _finite(diffs)
    if d.size < 2:
        return math.nan, math.nan
    half = scipy_stats.t.ppf((1.0 + confidence) / 2.0, d.size - 1) * np.std(d, ddof=1) / (
        math.sqrt(d.size))
    return float(np.mean(d) - half), float(np.mean(d) + half)


def paired_t_test(diffs):
    """(t, two-sided p) of H0: mean(d) = 0, t = mean(d) / (std(d) / sqrt(n)) with n - 1
    degrees of freedom. NaN for fewer than two pairs or differences that are all equal."""
    d = _finite(diffs)
    if d.size < 2:
        return math.nan, math.nan
    sd = float(np.std(d, ddof=1))
    if sd == 0.0:
        return math.nan, math.nan
    t = float(np.mean(d)) / (sd / math.sqrt(d.size))
    return t, float(2.0 * scipy_stats.t.sf(abs(t), d.size - 1))


def _signed_ranks(diffs):
    """Ranks of |d| (ties averaged) of the non-zero d, and the signs."""
    d = _finite(diffs)
    d = d[d != 0.0]  # Wilcoxon's convention: zero differences carry no sign
    return scipy_stats.rankdata(np.abs(d)), np.sign(d)


def wilcoxon_signed_rank(diffs):
    """(min(W+, W-), two-sided p) of the signed-rank test of H0: d symmetric about 0.

    W+ is the sum of the ranks of |d| over the positive d. The p-value is exact up to
    EXACT_WILCOXON_MAX_N non-zero differences: under H0 each sign is + or - with probability
    1/2, so the null distribution of W+ is counted over all 2^n sign patterns of the ranks
    (conditional on tied ranks, which stay exact); above that, the normal approximation
    with the tie correction. p = min(1, 2 P(W+ <= min(W+, W-))). NaN with no non-zero d.
    """
    ranks, signs = _signed_ranks(diffs)
    n = ranks.size
    if n == 0:
        return math.nan, math.nan
    w_plus = float(np.sum(ranks[signs > 0]))
    w_minus = float(np.sum(ranks[signs < 0]))
    stat = min(w_plus, w_minus)
    if n <= EXACT_WILCOXON_MAX_N:
        doubled = np.rint(2 * ranks).astype(np.int64)  # tied ranks are halves: integers x 2
        counts = np.zeros(int(doubled.sum()) + 1, np.float64)
        counts[0] = 1.0
        for r in doubled:  # counts[s]: sign patterns whose doubled W+ is s (r >= 2)
            counts[r:] += counts[:-r].copy()
        p_low = counts[:int(np.rint(2 * stat)) + 1].sum() / counts.sum()
        return stat, float(min(1.0, 2.0 * p_low))
    mean = n * (n + 1) / 4.0
    _, tie_counts = np.unique(ranks, return_counts=True)
    var = n * (n + 1) * (2 * n + 1) / 24.0 - np.sum(tie_counts ** 3 - tie_counts) / 48.0
    z = (stat - mean) / math.sqrt(var)
    return stat, float(min(1.0, 2.0 * scipy_stats.norm.cdf(z)))


def paired_comparison(a, b, confidence=0.95):
    """PairedComparison of arm b against arm a; a[i] and b[i] are the same seed's numbers."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    if len(a) != len(b):
        raise ValueError(f"paired arms need one number per seed each: {len(a)} and {len(b)}")
    pairs = [(x, y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    diffs = [y - x for x, y in pairs]
    low, high = t_interval(diffs, confidence)
    t, t_p = paired_t_test(diffs)
    w, w_p = wilcoxon_signed_rank(diffs)
    return PairedComparison(a=summarize(a), b=summarize(b), n=len(pairs), diff=summarize(diffs),
                            ci_low=low, ci_high=high, confidence=confidence, t_stat=t,
                            t_pvalue=t_p, wilcoxon_stat=w, wilcoxon_pvalue=w_p)
