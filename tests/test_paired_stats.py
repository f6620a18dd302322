"""The paired statistics (mgr_jax/experiments/stats.py) against scipy and hand-computed numbers,
and the commands built on them (paired, sweep_finder) with a trainer that only writes files."""
import csv
import json
import math
import os

import numpy as np
import pytest
from scipy import stats as scipy_stats

from mgr_jax import files
from mgr_jax.errors import UserError
from mgr_jax.experiments import cli, paired, stats, sweep_finder, tables
from mgr_jax.run import config_lib
from tests.helpers import config_rng, tiny_config, write_fake_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Five seeds' test top-1 of two arms; d = b - a = [1, 0.5, 1, 0, 1.5].
A = [90.0, 91.0, 92.0, 89.0, 90.5]
B = [91.0, 91.5, 93.0, 89.0, 92.0]


# ----------------------------------------------------------------------------- statistics

def test_paired_comparison_by_hand():
    """d = [1, 0.5, 1, 0, 1.5]: mean 0.8, sum of squared deviations 1.3, std sqrt(1.3 / 4) =
    0.570088, standard error 0.254951; t_{0.975, 4} = 2.776445 (tables) gives the interval
    0.8 -+ 0.707857. Wilcoxon: the zero is dropped, |d| = [1, 0.5, 1, 1.5] has ranks
    [2.5, 1, 2.5, 4], all positive: W- = 0, and P(W+ = 10) = 1/16 over the 2^4 sign patterns
    (two-sided p = 2/16)."""
    c = stats.paired_comparison(A, B)
    assert (c.n, c.a.n, c.b.n) == (5, 5, 5)
    assert c.a.mean == pytest.approx(90.5) and c.b.mean == pytest.approx(91.3)
    assert c.a.std == pytest.approx(math.sqrt(5.0 / 4.0))
    assert c.diff.mean == pytest.approx(0.8) and c.diff.std == pytest.approx(0.570088, abs=1e-6)
    assert c.ci_low == pytest.approx(0.8 - 0.707857, abs=1e-6)
    assert c.ci_high == pytest.approx(0.8 + 0.707857, abs=1e-6)
    assert c.t_stat == pytest.approx(0.8 / 0.254951, rel=1e-5)
    assert (c.wilcoxon_stat, c.wilcoxon_pvalue) == (0.0, pytest.approx(0.125))
    assert c.as_dict()["diff_mean"] == pytest.approx(0.8)


def test_t_test_and_wilcoxon_agree_with_scipy():
    rng = np.random.default_rng(0)
    for n in (3, 6, 10, 14):
        a = rng.normal(90.0, 1.0, n)
        b = a + rng.normal(0.3, 0.8, n)
        c = stats.paired_comparison(a, b)
        want = scipy_stats.ttest_rel(b, a)
        assert c.t_stat == pytest.approx(want.statistic, rel=1e-9)
        assert c.t_pvalue == pytest.approx(want.pvalue, rel=1e-9)
        interval = scipy_stats.t.interval(0.95, n - 1, loc=np.mean(b - a),
                                          scale=scipy_stats.sem(b - a))
        assert (c.ci_low, c.ci_high) == pytest.approx(interval, rel=1e-9)
        exact = scipy_stats.wilcoxon(b - a, method="exact")  # no ties, no zeros
        assert c.wilcoxon_stat == exact.statistic
        assert c.wilcoxon_pvalue == pytest.approx(exact.pvalue, rel=1e-9)
    d = rng.normal(0.2, 1.0, 40)  # above the exact limit: the normal approximation
    assert stats.wilcoxon_signed_rank(d)[1] == pytest.approx(
        scipy_stats.wilcoxon(d, method="asymptotic").pvalue, rel=1e-9)


def test_ties_failed_runs_and_degenerate_cases():
    """d = [1, -1, 2]: ranks [1.5, 1.5, 3]; W+ = 4.5, W- = 1.5; of the 8 sign patterns 3 have
    W+ <= 1.5 (0, 1.5, 1.5), so p = 2 * 3/8. A NaN (failed run) drops its pair."""
    assert stats.wilcoxon_signed_rank([1.0, -1.0, 2.0]) == (1.5, pytest.approx(0.75))
    c = stats.paired_comparison([1.0, math.nan, 3.0, 4.0], [2.0, 5.0, math.nan, 6.0])
    assert c.n == 2 and c.a.n == 3 and c.b.n == 3
    assert c.diff.mean == pytest.approx(1.5)
    same = stats.paired_comparison([1.0, 2.0], [1.0, 2.0])
    assert math.isnan(same.t_pvalue) and math.isnan(same.wilcoxon_pvalue)
    assert math.isnan(stats.paired_comparison([1.0], [2.0]).ci_low)
    with pytest.raises(ValueError, match="one number per seed"):
        stats.paired_comparison([1.0, 2.0], [1.0])


def _accuracy_differences(count_diffs, n_test=359, seed=0):
    """d = acc_b - acc_a in percent of n_test images, arm b having count_diffs more correct,
    the arms' accuracies computed in two ways (100 * k / N and k / N * 100), as two codes
    that count the same images may: equal count differences differ by float rounding."""
    k_a = np.random.default_rng(seed).integers(200, 300, len(count_diffs))
    k_b = k_a + np.asarray(count_diffs)
    return np.array([kb / n_test * 100.0 - 100.0 * ka / n_test for ka, kb in zip(k_a, k_b)])


def _exact_wilcoxon(count_diffs):
    """(min(W+, W-), two-sided p) by listing all 2^n sign patterns of the ranks of the integer
    differences (exact ties; zeros dropped): the definition, independent of `stats`."""
    d = np.asarray([c for c in count_diffs if c != 0], np.float64)
    ranks = scipy_stats.rankdata(np.abs(d))
    stat = min(ranks[d > 0].sum(), ranks[d < 0].sum())
    patterns = (np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1  # 1 = positive
    w_plus = patterns @ ranks
    return stat, min(1.0, 2.0 * np.mean(w_plus <= stat + 1e-9))  # ranks are halves: exact


@pytest.mark.parametrize("count_diffs", [
    [1, 1, -1, 2, 1, 3, -2, 1, 4, 2],  # ties of 1s and 2s, both signs
    [1, 1, -1, 2, 1, 0, -2, 1, 0, 2, 1, -1],  # and zero differences (float zeros or +-1e-14)
    [2, 2, 2, -2, 1, 1, -3, 3, 3, 1, -1, 4, 2, -5, 1, 2, 6, -1, 1, 2, 3, -2],  # n = 22
])
def test_wilcoxon_ties_decided_up_to_rounding(count_diffs):
    """Differences of equal image counts, computed from different accuracies, are one tied
    value: the test equals the exact test on the integer counts (scaling does not change
    ranks), by enumeration and, up to 13 differences, scipy's exact permutation method. The
    same counts ranked as floats would split the ties (the old behaviour)."""
    d = _accuracy_differences(count_diffs)
    nonzero = [c for c in count_diffs if c]
    assert len(np.unique(d[d > 1e-9])) > len(set(c for c in nonzero if c > 0)), \
        "the case needs rounding noise between equal count differences"
    stat, p = stats.wilcoxon_signed_rank(d)
    want_stat, want_p = _exact_wilcoxon(count_diffs)
    assert stat == want_stat and p == pytest.approx(want_p, rel=1e-12)
    if len(nonzero) <= 13:  # scipy enumerates all 2^n patterns (n_resamples 9999 >= 2^13)
        want = scipy_stats.wilcoxon(nonzero, method=scipy_stats.PermutationMethod())
        assert stat == want.statistic and p == pytest.approx(want.pvalue, rel=1e-12)


def test_wilcoxon_ties_above_the_exact_limit_match_scipy_asymptotic():
    """60 differences of a few image counts (many ties, zeros): the normal approximation with
    the tie correction equals scipy's "asymptotic" method on the integer counts (scipy drops
    zeros and leaves out the continuity correction by default, as `stats` does)."""
    rng = np.random.default_rng(3)
    counts = rng.integers(-3, 5, 60)
    assert len(counts[counts != 0]) > stats.EXACT_WILCOXON_MAX_N
    stat, p = stats.wilcoxon_signed_rank(_accuracy_differences(counts, seed=1))
    want = scipy_stats.wilcoxon(counts, method="asymptotic")
    assert stat == want.statistic and p == pytest.approx(want.pvalue, rel=1e-9)


def test_wilcoxon_tie_groups_do_not_chain():
    """|d| = 1, 1 + 0.6e-9, 1 + 1.2e-9: the second is within TIE_TOLERANCE of the first, the
    third is not (it is compared with the group's first value, not with its neighbour), so
    the ranks are 1.5, 1.5, 3 (W- = 3 = W+), not 2, 2, 2 (W- = 2)."""
    assert stats.TIE_TOLERANCE == 1e-9
    stat, _ = stats.wilcoxon_signed_rank([1.0, 1.0 + 0.6e-9, -(1.0 + 1.2e-9)])
    assert stat == 3.0
    assert all(map(math.isnan, stats.wilcoxon_signed_rank([1e-12, -1e-12])))  # zeros


def test_holm_by_hand():
    """p = [0.01, 0.04, 0.03, 0.005] (m = 4), sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1:
    0.02, 0.03, 0.06, 0.04, then the running maximum 0.02, 0.03, 0.06, 0.06, put back in the
    order given. Capped at 1; equal p-values share one value; NaN is not a test."""
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]  # 2 x 0.5, then max(1, 0.6)
    assert stats.holm([0.02, 0.02, 0.5]) == pytest.approx([0.06, 0.06, 0.5])
    adjusted = stats.holm([0.01, math.nan, 0.02])  # m = 2
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.02)
    assert stats.holm([]) == [] and stats.holm([0.3]) == [0.3]
    with pytest.raises(ValueError, match="must be in"):
        stats.holm([0.1, 1.5])


def test_holm_rejects_as_the_step_down_procedure():
    """For every alpha, {i: adjusted_i <= alpha} is the set Holm's procedure rejects, written
    as the procedure: sort, reject while p_(i) <= alpha / (m - i + 1), stop at the first that
    is not. Adjusted values are monotone in p and not below p."""
    rng = np.random.default_rng(0)
    for m in (1, 2, 5, 12):
        p = np.round(rng.uniform(0, 0.2, m) ** 2, 4)  # rounded: some equal p-values
        adjusted = np.asarray(stats.holm(p))
        assert np.all(adjusted >= p) and np.all(adjusted <= 1.0)
        order = np.argsort(p, kind="stable")
        assert np.all(np.diff(adjusted[order]) >= 0)
        for alpha in rng.uniform(0.0, 0.5, 200):  # (not on a boundary, where float
            # rounding of alpha / (m - i) and (m - i) * p could disagree)
            rejected = set()
            for i, k in enumerate(order):
                if p[k] > alpha / (m - i):
                    break
                rejected.add(int(k))
            assert set(np.flatnonzero(adjusted <= alpha).tolist()) == rejected


# ----------------------------------------------------------------------------- commands

class FileTrainer:
    """Writes what train.train_and_evaluate would (results.json, metrics.jsonl epoch records)
    with numbers drawn from the config: test top-1 90 + seed / 10 (+ 0.5 for MGR, minus
    0.1 per log2 of update_every), val top-1 from the config's hash, steps_per_s 10 / 2 / 4
    (PCR / MGR k=1 / MGR k>1); MGR epochs log meta_descended 0.75 and a displacement 0.1 *
    epoch * finder_lr / 1e-4."""

    def __init__(self):
        self.calls = []

    def __call__(self, config, workdir, max_epochs_this_run=None):
        self.calls.append(config)
        config_lib.validate(config)
        os.makedirs(workdir, exist_ok=True)
        mgr = config.method == "mgr"
        with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
            for epoch in range(1, config.num_epochs + 1):
                record = {"kind": "epoch", "step": epoch, "epoch": epoch, "loss": 1.0}
                if mgr:
                    record.update(meta_descended=0.75, meta_descent=-1e-4 * epoch,
                                  latent_displacement=0.1 * epoch * config.mps.finder_lr / 1e-4)
                f.write(json.dumps(record) + "\n")
        return write_fake_results(workdir, self.numbers(config))

    @staticmethod
    def numbers(config):
        rng = config_rng(config)
        k = config.mps.update_every
        test = 90.0 + 0.1 * config.seed
        if config.method == "mgr":
            test += 0.5 - 0.1 * math.log2(k)
        sps = 10.0 if config.method == "pcr" else (2.0 if k == 1 else 4.0)
        return {"method": config.method, "seed": config.seed, "best_epoch": 1,
                "val_top1": round(float(rng.uniform(40, 60)), 4), "test_top1": test,
                "wall_clock_s": 10.0, "steps_per_s": sps, "num_epochs": config.num_epochs}


def tiny():
    return tiny_config(num_epochs=2)


def _read_csv(path):
    with open(path, newline="") as f:
        return {row["arm"]: row for row in csv.DictReader(f)}


def test_paired_command_pairs_the_arms_by_seed(tmp_path):
    trainer = FileTrainer()
    out = paired.run(tiny(), str(tmp_path), seeds=(0, 1, 2), update_every=(1, 4),
                     finder={"mps.finder_lr": 1e-3}, trainer=trainer)
    assert len(trainer.calls) == 9  # PCR, MGR k=1, MGR k=4 x 3 seeds
    assert all(c.data.subset_fraction == 0.1 for c in trainer.calls)
    mgr = [c for c in trainer.calls if c.method == "mgr"]
    assert all(c.mps.log_meta_descent and c.mps.finder_lr == 1e-3 for c in mgr)
    assert sorted(c.mps.update_every for c in mgr) == [1, 1, 1, 4, 4, 4]
    rows = _read_csv(out["paths"]["paired"])
    assert list(rows) == ["PCR", "MGR (k=1)", "MGR (k=4)"]
    pcr = [90.0, 90.1, 90.2]
    for arm, effect in (("MGR (k=1)", 0.5), ("MGR (k=4)", 0.3)):
        want = stats.paired_comparison(pcr, [x + effect for x in pcr])
        row = rows[arm]
        assert float(row["diff_mean"]) == pytest.approx(effect, abs=1e-6)
        assert float(row["ci_low"]) == pytest.approx(want.ci_low, abs=1e-5)
        assert float(row["wilcoxon_pvalue"]) == pytest.approx(0.25)  # 3 positive of 3
        assert float(row["descending_pct"]) == pytest.approx(75.0)
        assert float(row["mean_meta_change"]) == pytest.approx(-1.5e-4)
        assert float(row["latent_displacement"]) == pytest.approx(2.0)  # last epoch, lr 1e-3
    assert float(rows["MGR (k=4)"]["step_ms"]) == pytest.approx(250.0)
    assert float(rows["MGR (k=1)"]["step_ratio_to_pcr"]) == pytest.approx(5.0)
    assert rows["PCR"]["diff_mean"] == "" and rows["PCR"]["values"] == "90;90.1;90.2"
    text = open(out["paths"]["markdown"]).read()
    assert "| MGR (k=4) | 90.40 ± 0.10 (n=3) | 0.30 |" in text
    assert "mps.finder_lr=0.001" in text
    again = FileTrainer()  # finished runs are found again, not retrained
    paired.run(tiny(), str(tmp_path), seeds=(0, 1, 2), update_every=(1, 4),
               finder={"mps.finder_lr": 1e-3}, trainer=again)
    assert again.calls == []


def test_sweep_finder_chooses_on_validation_only(tmp_path):
    trainer = FileTrainer()
    settings = sweep_finder.grid(lrs=(1e-4, 1e-2), betas=((0.9, 0.999), (0.5, 0.9)),
                                 normalize=(False,), warmups=(0,), optimizers=("adam", "sgd"))
    assert len(settings) == 6  # adam: 2 lrs x 2 betas; sgd: 2 lrs, no betas
    out = sweep_finder.run(tiny(), str(tmp_path), seeds=(0, 1), settings=settings,
                           trainer=trainer)
    vals = {}
    for job in out["jobs"]:
        vals.setdefault(job.column, []).append(FileTrainer.numbers(job.config)["val_top1"])
    labels = [sweep_finder.label(s) for s in settings]
    best = max(labels, key=lambda name: (np.mean(vals[name]), -labels.index(name)))
    assert out["chosen"] == settings[labels.index(best)]
    assert files.read_json(out["paths"]["chosen"]) == out["chosen"]
    cells = tables.read_table_csv(out["paths"]["sweep_finder"])
    assert {c for _, c in cells} == set(sweep_finder.COLUMNS)  # no test column
    assert cells[(best, "Descending updates (%)")]["mean"] == pytest.approx(75.0)
    chosen = tables.read_table_csv(out["paths"]["sweep_finder_chosen"])
    assert list(chosen) == [(best, "Val top-1 (%)"), (best, "Test top-1 (%)")]
    assert "test" not in open(out["paths"]["runs"]).readline()
    assert all(c.mps.log_meta_descent for c in trainer.calls)
    assert sweep_finder.choose([50.0, math.nan, 51.0, 51.0]) == 2


def test_finder_settings_and_command_lines_parse(tmp_path):
    setting = sweep_finder.parse_setting("mps.finder_lr=1e-3,mps.normalize_hypergrad=true,"
                                         "mps.finder_optimizer=sgd,finder.arch=linear")
    assert setting == {"mps.finder_lr": 1e-3, "mps.normalize_hypergrad": True,
                       "mps.finder_optimizer": "sgd", "finder.arch": "linear"}
    with pytest.raises(UserError, match="mps.finder_rate is not a config field"):
        sweep_finder.parse_setting("mps.finder_rate=1")
    with pytest.raises(UserError, match="a paired comparison needs at least two seeds"):
        paired.run(tiny(), str(tmp_path), seeds=(0,), trainer=FileTrainer())
    with pytest.raises(UserError, match="mps.update_every=0 must be an integer >= 1"):
        paired.run(tiny(), str(tmp_path), seeds=(0, 1), update_every=(0,),
                   trainer=FileTrainer())
    chosen = tmp_path / "chosen_finder.json"
    chosen.write_text(json.dumps({"mps.finder_lr": 0.01, "mps.finder_b1": 0.5}))
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        kwargs = cli.parse_command_line(paired, [
            "paired", "--config=configs/digits_few.py", f"--workdir={tmp_path}",
            f"--finder_file={chosen}", "--finder=mps.finder_b1=0.0", "--update_every=1,16"])
        sweep = cli.parse_command_line(sweep_finder, [
            "sweep_finder", "--config=configs/default.py", f"--workdir={tmp_path}",
            "--finder_lrs=1e-3", "--betas=0.9/0.999,0/0.9", "--normalize=true",
            "--optimizers=adam,sgd"])
    finally:
        os.chdir(cwd)
    assert kwargs["seeds"] == list(range(10)) and kwargs["update_every"] == [1, 16]
    assert kwargs["finder"] == {"mps.finder_lr": 0.01, "mps.finder_b1": 0.0}
    assert [sweep_finder.label(s) for s in sweep["settings"]] == [
        "adam lr 0.001 β 0.9/0.999 norm", "adam lr 0.001 β 0/0.9 norm", "sgd lr 0.001 norm"]
    assert sweep["seeds"] == [0]
