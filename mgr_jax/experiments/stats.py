"""Paired comparison of two arms over seeds: summaries, the paired difference, its CI, tests,
and Holm's correction of the p-values of several comparisons.

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
# |d| within TIE_TOLERANCE * max(1, |d|) of each other are one tied value, and |d| up to
# TIE_TOLERANCE is a zero. The differences are accuracies in percent from image counts,
# 100 * k / N: two distinct ones are at least 100 / N apart (1e-6 with 100 million test
# images; the widest tolerance, at |d| = 100, is 1e-7), while one count difference computed
# from different counts (100 * (k + 1) / N - 100 * k / N for two k) varies by float64
# rounding, about 1e-14 at 100: the tolerance is far from both.
TIE_TOLERANCE = 1e-9


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
    """(ranks of |d|, signs, sizes of the tie groups) of the non-zero d (see TIE_TOLERANCE).

    |d| are sorted and cut into groups: a group holds the values within TIE_TOLERANCE *
    max(1, first) of its first (smallest) value, so each value is compared with one fixed
    value, and a run of values each a little above the last cannot grow into a wide group.
    Each group's values share the mean of the ranks they span.
    """
    d = _finite(diffs)
    d = d[np.abs(d) > TIE_TOLERANCE]  # zeros, up to rounding, carry no sign (Wilcoxon's rule)
    magnitude = np.abs(d)
    order = np.argsort(magnitude, kind="stable")
    ranks, sizes, first = np.empty(d.size), [], 0
    for i in range(1, d.size + 1):
        if i == d.size or magnitude[order[i]] - magnitude[order[first]] > \
                TIE_TOLERANCE * max(1.0, magnitude[order[first]]):
            ranks[order[first:i]] = (first + 1 + i) / 2.0  # the mean of ranks first + 1 .. i
            sizes.append(i - first)
            first = i
    return ranks, np.sign(d), np.asarray(sizes, np.float64)


def wilcoxon_signed_rank(diffs):
    """(min(W+, W-), two-sided p) of the signed-rank test of H0: d symmetric about 0.

    W+ is the sum of the ranks of |d| over the positive d; |d| equal up to float rounding are
    tied and share their mean rank, zeros are dropped (TIE_TOLERANCE). The p-value is exact up
    to EXACT_WILCOXON_MAX_N non-zero differences: under H0 each sign is + or - with
    probability 1/2, so the null distribution of W+ is counted over all 2^n sign patterns of
    the ranks as they are, tied ones included (conditional on the ties: scipy's permutation
    method). Tied ranks are multiples of 1/2, so the count runs over 2 W+, an integer. Above
    that, the normal approximation with the tie correction of the variance,
    n (n + 1) (2n + 1) / 24 - sum over tie groups of (t^3 - t) / 48, and no continuity
    correction (scipy's "asymptotic"). p = min(1, 2 P(W+ <= min(W+, W-))): the null
    distribution is symmetric about half the rank sum. NaN with no non-zero d.
    """
    ranks, signs, tie_sizes = _signed_ranks(diffs)
    n = ranks.size
    if n == 0:
        return math.nan, math.nan
    w_plus = float(np.sum(ranks[signs > 0]))
    w_minus = float(np.sum(ranks[signs < 0]))
    stat = min(w_plus, w_minus)
    if n <= EXACT_WILCOXON_MAX_N:
        doubled = np.rint(2 * ranks).astype(np.int64)  # exact: ranks are halves
        counts = np.zeros(int(doubled.sum()) + 1, np.float64)  # < 2^25: exact in float64
        counts[0] = 1.0
        for r in doubled:  # counts[s]: sign patterns whose doubled W+ is s (r >= 2)
            counts[r:] += counts[:-r].copy()
        p_low = counts[:int(np.rint(2 * stat)) + 1].sum() / counts.sum()
        return stat, float(min(1.0, 2.0 * p_low))
    mean = n * (n + 1) / 4.0
    var = n * (n + 1) * (2 * n + 1) / 24.0 - np.sum(tie_sizes ** 3 - tie_sizes) / 48.0
    z = (stat - mean) / math.sqrt(var)
    return stat, float(min(1.0, 2.0 * scipy_stats.norm.cdf(z)))


def holm(pvalues):
    """Holm's step-down adjusted p-values of a family of tests, in the order given.

    With the m p-values sorted, p_(1) <= ... <= p_(m), the adjusted value of the i-th is
    max over j <= i of min(1, (m - j + 1) p_(j)): monotone in p, at most 1, and rejecting
    where it is <= alpha keeps the family-wise error rate at alpha under any dependence
    between the tests. NaN entries (tests without a p-value, e.g. all differences zero) stay
    NaN and are not counted in m (as R's p.adjust). Equal p-values get equal adjusted values.
    """
    p = np.asarray([float(x) for x in pvalues], np.float64)
    if np.any((p < 0.0) | (p > 1.0)):
        raise ValueError(f"p-values must be in [0, 1]: {p.tolist()}")
    adjusted = np.full(p.shape, math.nan)
    present = np.flatnonzero(~np.isnan(p))
    order = present[np.argsort(p[present], kind="stable")]
    m = order.size
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return [float(x) for x in adjusted]


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


def detectable_difference(sd, n, power=0.8, alpha=0.05):
    """The smallest true mean difference a two-sided paired t-test at level `alpha` detects
    with probability `power` over `n` pairs whose differences spread with sample std `sd`:
    (t_{1 - alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n). NaN below two pairs."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    quantiles = scipy_stats.t.ppf(1.0 - alpha / 2.0, n - 1) + scipy_stats.t.ppf(power, n - 1)
    return float(quantiles * sd / math.sqrt(n))


def paired_t_power(delta, sd, n, alpha=0.05):
    """Power of the two-sided paired t-test at level `alpha` against a true mean difference
    `delta` (differences with std `sd`, `n` pairs): the noncentral t's mass beyond the
    critical values, noncentrality delta * sqrt(n) / sd."""
    crit = scipy_stats.t.ppf(1.0 - alpha / 2.0, n - 1)
    nc = delta * math.sqrt(n) / sd
    return float(scipy_stats.nct.sf(crit, n - 1, nc) + scipy_stats.nct.cdf(-crit, n - 1, nc))


# The three readings of a pre-registered comparison of a paired difference's interval.
HELPS, NO_GAIN_LARGER, NOT_DETECTED = "helps", "no gain larger than the margin", "not detected"


def decision(ci_low, ci_high, margin):
    """The pre-registered reading of a difference's confidence interval: HELPS when it lies
    above 0; else NO_GAIN_LARGER when its upper end is below `margin` (the smallest gain that
    matters); else NOT_DETECTED (also for a NaN interval: too few pairs)."""
    if math.isfinite(ci_low) and ci_low > 0.0:
        return HELPS
    if math.isfinite(ci_high) and ci_high < margin:
        return NO_GAIN_LARGER
    return NOT_DETECTED
