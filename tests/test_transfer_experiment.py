"""The pre-registered comparison (mgr_jax/experiments/transfer.py) and the statistics it adds
(power, the decision rule), against simulation, scipy and hand-computed numbers, with a trainer
that only writes files."""
import json
import math
import os

import numpy as np
import pytest

from mgr_jax.errors import UserError
from mgr_jax.experiments import cli, stats, transfer
from mgr_jax.run import config_lib
from tests.helpers import tiny_config, write_fake_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- statistics

def test_detectable_difference_has_the_power_it_claims():
    """At the detectable difference, the paired t-test rejects about 80 % of the time: the
    noncentral-t power and a simulation of 20,000 designs (numpy draws, scipy's t quantile
    only for the critical value) agree with it, and power at zero difference is alpha."""
    n, sd = 20, 0.7
    delta = stats.detectable_difference(sd, n)
    assert stats.paired_t_power(delta, sd, n) == pytest.approx(0.80, abs=0.01)
    assert stats.paired_t_power(1e-12, sd, n) == pytest.approx(0.05, abs=1e-6)
    rng = np.random.default_rng(0)
    d = rng.normal(delta, sd, size=(20_000, n))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    crit = 2.093024  # t_{0.975, 19} from tables
    assert np.mean(np.abs(t) > crit) == pytest.approx(0.80, abs=0.015)
    # t_{0.975,19} + t_{0.80,19} = 2.093024 + 0.860955 (tables)
    assert delta == pytest.approx((2.093024 + 0.860955) * sd / math.sqrt(n), rel=1e-5)
    assert math.isnan(stats.detectable_difference(sd, 1))


@pytest.mark.parametrize("low, high, want", [
    (0.01, 0.2, stats.HELPS),  # above 0 wins even below the margin
    (-0.5, 0.35, stats.NO_GAIN_LARGER),
    (-0.5, 0.36, stats.NOT_DETECTED),  # the margin itself is not below it
    (-0.1, 1.0, stats.NOT_DETECTED),
    (math.nan, math.nan, stats.NOT_DETECTED)])
def test_decision_rule(low, high, want):
    assert stats.decision(low, high, 0.36) == want


def test_first_step_ratio():
    records = ([{"epoch": 1, "meta_grad_norm": 6.0}, {"epoch": 1, "meta_grad_norm": 1.0}]
               + [{"epoch": e, "meta_grad_norm": v} for e, v in
                  [(2, 1.0), (3, 2.0), (10, 3.0), (11, 100.0)]])
    assert transfer.first_step_ratio(records) == pytest.approx(6.0 / 2.0)
    assert math.isnan(transfer.first_step_ratio(records[:2]))
    assert math.isnan(transfer.first_step_ratio([]))


def test_analyse_reads_the_rule_and_corrects_against_base():
    seeds = range(6)
    base = {s: 80.0 + 0.3 * s for s in seeds}
    pcr = {s: base[s] + 1.0 + 0.1 * (s % 2) for s in seeds}
    mgr = {s: pcr[s] + [0.2, -0.1, 0.0, 0.1, -0.2, 0.05][s] for s in seeds}
    out = transfer.analyse({"base": base, "PCR": pcr, "MGR": mgr}, ratios=[2.0, 4.0, math.nan])
    d = np.array([mgr[s] - pcr[s] for s in seeds])
    primary = out["comparisons"]["MGR - PCR"]
    assert primary["diff_mean"] == pytest.approx(d.mean())
    assert primary["ci_high"] < 0.36 and primary["ci_low"] < 0
    assert out["decision"] == stats.NO_GAIN_LARGER
    assert out["answer"] == "no gain larger than 0.36 points here"
    assert primary["detectable"] == pytest.approx(
        stats.detectable_difference(np.std(d, ddof=1), 6))
    rows = [out["comparisons"]["PCR - base"], out["comparisons"]["MGR - base"]]
    p = sorted(r["t_pvalue"] for r in rows)
    holm = sorted(r["t_pvalue_holm"] for r in rows)
    assert holm[0] == pytest.approx(min(1.0, 2 * p[0]))
    assert holm[1] == pytest.approx(max(holm[0], p[1]))
    assert "t_pvalue_holm" not in primary  # the primary comparison is not in that family
    assert out["preconditions"]["pcr_above_base"] is True
    assert out["preconditions"]["first_meta_step_ratio_median"] == pytest.approx(3.0)
    assert "MGR (FD) - PCR" not in out["comparisons"]


class FileTrainer:
    """Writes results.json and per-step train records: test top-1 85 + seed / 10, + 1 for PCR
    and MGR, + 0.5 more for MGR exact; MGR's meta_grad_norm 5 at step 1, then 1."""

    def __init__(self):
        self.calls = []

    def __call__(self, config, workdir, max_epochs_this_run=None):
        self.calls.append(config)
        config_lib.validate(config)
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
            for step in range(1, 3 * config.num_epochs + 1):
                record = {"kind": "train", "step": step, "epoch": (step - 1) // 3 + 1}
                if config.method == "mgr":
                    record["meta_grad_norm"] = 5.0 if step == 1 else 1.0
                f.write(json.dumps(record) + "\n")
        test = 85.0 + 0.1 * config.seed + (config.method != "base")
        if config.method == "mgr" and config.mps.hypergradient == "exact":
            test += 0.5
        return write_fake_results(workdir, {
            "method": config.method, "seed": config.seed, "best_epoch": 1, "val_top1": 50.0,
            "test_top1": test, "wall_clock_s": 1.0, "steps_per_s": 1.0,
            "num_epochs": config.num_epochs})


def test_transfer_command_runs_the_arms_paired(tmp_path):
    trainer = FileTrainer()
    out = transfer.run(tiny_config(num_epochs=4), str(tmp_path), seeds=(0, 1, 2),
                       fd_seeds=(0, 1), finder={"mps.finder_lr": 1e-3},
                       lambda_map={"pcr": 0.5}, trainer=trainer)
    methods = sorted((c.method, c.mps.hypergradient, c.seed) for c in trainer.calls
                     if c.method == "mgr")
    assert len(trainer.calls) == 11 and len(methods) == 5
    assert all(c.mps.finder_lr == 1e-3 for c in trainer.calls if c.method == "mgr")
    assert all(c.lambda_ == 0.5 for c in trainer.calls if c.method in ("pcr", "mgr"))
    result = out["result"]
    # Differences are exact multiples: MGR - PCR 0.5 at every seed, the interval is a point.
    assert result["comparisons"]["MGR - PCR"]["diff_mean"] == pytest.approx(0.5)
    assert result["decision"] == stats.HELPS and result["answer"] == "MPS helps here"
    assert result["comparisons"]["MGR (FD) - MGR"]["seeds"] == [0, 1]
    assert result["comparisons"]["MGR (FD) - MGR"]["diff_mean"] == pytest.approx(-0.5)
    assert result["preconditions"]["first_meta_step_ratio_median"] == pytest.approx(5.0)
    saved = json.load(open(out["paths"]["json"]))
    assert saved["values"]["MGR"] == {"0": 86.5, "1": 86.6, "2": 86.7}
    assert "**MPS helps here**" in open(out["paths"]["markdown"]).read()
    again = FileTrainer()  # finished runs are found, not retrained
    transfer.run(tiny_config(num_epochs=4), str(tmp_path), seeds=(0, 1, 2), fd_seeds=(0, 1),
                 finder={"mps.finder_lr": 1e-3}, lambda_map={"pcr": 0.5}, trainer=again)
    assert again.calls == []


def test_transfer_command_refusals(tmp_path):
    with pytest.raises(UserError, match="at least two seeds"):
        transfer.run(tiny_config(), str(tmp_path), seeds=(0,), trainer=FileTrainer())
    with pytest.raises(UserError, match="fd_seeds"):
        transfer.run(tiny_config(), str(tmp_path), seeds=(0, 1), fd_seeds=(5,),
                     trainer=FileTrainer())
    assert not os.listdir(tmp_path)


def test_transfer_arms_train_apart_then_compare(tmp_path):
    """--arms trains only the arms named and compares nothing; the full command then finds
    them finished and trains the rest only."""
    first = FileTrainer()
    out = transfer.run(tiny_config(num_epochs=2), str(tmp_path), seeds=(0, 1),
                       arms=["base", "pcr"], trainer=first)
    assert sorted(c.method for c in first.calls) == ["base", "base", "pcr", "pcr"]
    assert "result" not in out and not os.path.exists(os.path.join(tmp_path, "transfer.json"))
    rest = FileTrainer()
    out = transfer.run(tiny_config(num_epochs=2), str(tmp_path), seeds=(0, 1), trainer=rest)
    assert [c.method for c in rest.calls] == ["mgr", "mgr"]
    assert out["result"]["comparisons"]["PCR - base"]["diff_mean"] == pytest.approx(1.0)
    with pytest.raises(UserError, match="are not arms"):
        transfer.run(tiny_config(), str(tmp_path), seeds=(0, 1), arms=["gda"],
                     trainer=FileTrainer())


def test_transfer_command_line(tmp_path):
    """The flags reach run(): the finder from its file then --finder, FD seeds, arms, margin;
    20 seeds by default."""
    chosen = tmp_path / "chosen_finder.json"
    chosen.write_text(json.dumps({"mps.finder_lr": 0.01, "mps.normalize_hypergrad": True}))
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        kwargs = cli.parse_command_line(transfer, [
            "transfer", "--config=configs/default.py", f"--workdir={tmp_path}",
            f"--finder_file={chosen}", "--finder=mps.finder_lr=0.001", "--fd_seeds=0,2",
            "--arms=base,pcr", "--margin=0.5"])
    finally:
        os.chdir(cwd)
    assert kwargs["seeds"] == list(range(20)) and kwargs["fd_seeds"] == [0, 2]
    assert kwargs["finder"] == {"mps.finder_lr": 0.001, "mps.normalize_hypergrad": True}
    assert kwargs["arms"] == ["base", "pcr"] and kwargs["margin"] == 0.5
