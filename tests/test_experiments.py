"""The experiment commands (mgr_jax/experiments) end to end on tiny settings.

Commands whose cells are cheap methods (base, gda, pcr) train for real (one epoch of
tests/helpers.tiny_config); the runs go to one pool shared by the tests of this module, so a
run needed by two commands trains once (as `--runs_dir` does for users). An MPS run costs
minutes of compilation on a loaded 2-core CPU, so the MPS cells are trained by `FakeTrainer`:
it keeps train.train_and_evaluate's contract (config checks, config.json, metrics.jsonl epoch
records, real orbax checkpoints of the untrained state, results.json, max_epochs_this_run)
with numbers drawn from the config, and the tables are checked against those numbers.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mgr_jax.run import checkpoints, config_lib, train
from mgr_jax.experiments import (
    ablation_finder,
    ablation_update,
    augment,
    cli,
    compare_hypergrad,
    figures,
    plots,
    runs,
    snapshots,
    sweep_lambda,
    table1,
    tables,
)
from mgr_jax.experiments.probe import Probe
from tests.helpers import config_rng, tiny_config, write_fake_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"num_epochs": 1, "generator.kind": "random", "generator.resolution": 8}


def tiny(**overrides):
    return tiny_config(**dict(TINY, **overrides))


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Run directories shared by this module's tests."""
    return str(tmp_path_factory.mktemp("runs"))


class FakeTrainer:
    """train.train_and_evaluate's contract without the training (see the module docstring).

    Numbers: test/val top-1 drawn from the config's hash; steps_per_s 1.0 for the exact
    hypergradient, 1.25 for finite differences, 0.5 with hypergradient logging; logged cosine
    0.9 + 0.01 * epoch and norm ratio 1.1. `real_methods` are passed to the real trainer.
    """

    def __init__(self, save_checkpoints=False, real_methods=()):
        self.calls = []
        self.save_checkpoints, self.real_methods = save_checkpoints, tuple(real_methods)

    def __call__(self, config, workdir, max_epochs_this_run=None):
        self.calls.append((config.method, workdir, max_epochs_this_run))
        if config.method in self.real_methods:
            return train.train_and_evaluate(config, workdir, max_epochs_this_run)
        config_lib.validate(config)
        config_dict = config_lib.to_dict(config)
        checkpoints.check_workdir_config(workdir, config_dict)
        checkpoints.write_config(workdir, config_dict)
        metrics_path = os.path.join(workdir, "metrics.jsonl")
        done = len(runs.read_metrics(workdir))
        last = config.num_epochs if max_epochs_this_run is None else min(
            config.num_epochs, done + max_epochs_this_run)
        state = train.setup(config).state if self.save_checkpoints else None
        ckpt = checkpoints.RunCheckpoints(workdir) if self.save_checkpoints else None
        logging = "mps" in config and config.mps.log_hypergrad_cosine
        for epoch in range(done + 1, last + 1):
            record = {"kind": "epoch", "step": 10 * epoch, "epoch": epoch, "loss": 1.0,
                      "val_top1": 50.0 + epoch, "val_loss": 2.0 / epoch}
            if logging:
                record.update(hypergrad_cosine=0.9 + 0.01 * epoch, hypergrad_norm_ratio=1.1)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if ckpt is not None:
                loop = {"epoch": epoch, "best_epoch": epoch, "best_val_top1": 50.0 + epoch,
                        "best_test_top1": 50.0, "elapsed_s": 1.0, "steps": 10 * epoch}
                ckpt.save(epoch, state, loop, True)
        if ckpt is not None:
            ckpt.close()
        if last < config.num_epochs:
            return None
        return write_fake_results(workdir, self.numbers(config))

    @staticmethod
    def numbers(config):
        rng = config_rng(config)
        sps = 1.0 if config.mps.hypergradient == "exact" else 1.25
        if config.mps.log_hypergrad_cosine:
            sps = 0.5
        steps = 10 * config.num_epochs
        return {"method": config.method, "dataset": config.data.name, "seed": config.seed,
                "best_epoch": config.num_epochs,
                "val_top1": round(float(rng.uniform(40, 60)), 4),
                "test_top1": round(float(rng.uniform(40, 60)), 4),
                "wall_clock_s": steps / sps, "steps_per_s": sps,
                "num_epochs": config.num_epochs, "lambda": runs.get_lambda(config)}


def _results(job):
    with open(os.path.join(job.workdir, "results.json")) as f:
        return json.load(f)


def _check_cells(csv_path, jobs, column_of_key=None):
    """Every cell of a table CSV is the mean ± std of its runs' results.json numbers."""
    cells = tables.read_table_csv(csv_path)
    assert cells
    for (row, column), cell in cells.items():
        key = (column_of_key or {}).get(column, "test_top1")
        feeding = [j for j in jobs if j.row == row
                   and (j.column == column or column_of_key is not None)]
        want = [_results(j)[key] for j in sorted(feeding, key=lambda j: j.seed)]
        assert cell["n"] == len(want)
        np.testing.assert_allclose(cell["values"], want, rtol=1e-5)
        np.testing.assert_allclose(cell["mean"], np.mean(want), rtol=1e-5)
        if len(want) > 1:
            np.testing.assert_allclose(cell["std"], np.std(want, ddof=1), rtol=1e-4)
    return cells


# ----------------------------------------------------------------------------- pure parts

def test_mean_std_and_table_against_hand_computed_numbers(tmp_path):
    mean, std, n = tables.mean_std([85.7, 85.9, 85.8])
    assert (round(mean, 10), round(std, 10), n) == (85.8, 0.1, 3)  # sqrt(0.02 / 2) = 0.1
    mean, std, n = tables.mean_std([1.0, 2.0, 4.0, float("nan")])  # a failed run is skipped
    assert n == 3 and mean == pytest.approx(7 / 3)
    assert std == pytest.approx(np.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2
                                         + (4 - 7 / 3) ** 2) / 2))
    assert np.isnan(tables.mean_std([3.0])[1]) and tables.mean_std([])[2] == 0

    table = tables.Table("t", "T", "Method", ["A", "B"], highlight="max", baseline_row="Base")
    table.add("Base", "A", [85.7, 85.9, 85.8])
    table.add("Base", "B", [10.0])
    table.add("Ours", "A", [87.0, 87.5, float("nan")])
    table.add("Ours", "B", [9.0, 9.5])
    md = table.markdown()
    assert "| Base | 85.80 ± 0.10 | **10.00** |" in md
    assert "| Ours | **<u>87.25 ± 0.35 (1 failed)</u>** | 9.25 ± 0.35 |" in md
    path = tmp_path / "t.csv"
    path.write_text(table.csv_text())
    cells = tables.read_table_csv(str(path))
    assert cells[("Base", "A")]["mean"] == pytest.approx(85.8)
    assert cells[("Base", "A")]["std"] == pytest.approx(0.1)
    assert cells[("Ours", "A")]["n"] == 2 and len(cells[("Ours", "A")]["values"]) == 3
    assert np.isnan(cells[("Base", "B")]["std"])


def test_run_names_come_from_the_settings():
    base = tiny()
    a = runs.make_job(base, {"method": "mgr", "mps.hypergradient": "finite_difference"}, 1)
    b = runs.make_job(base, {"mps.hypergradient": "finite_difference", "method": "mgr"}, 1)
    assert a.name == b.name
    assert a.name.startswith("digits-mgr-s1-mps.hypergradient=finite_difference-")
    # A value equal to the base config's adds nothing to the name: the runs are identical.
    same = runs.make_job(base, {"method": "mgr", "lambda": runs.get_lambda(base)}, 0)
    assert same.name == runs.make_job(base, {"method": "mgr"}, 0).name
    # Any other change of the config (here in the base) gives another directory.
    other = tiny(**{"model.width": 0.25})
    assert runs.make_job(other, {"method": "mgr"}, 0).name != same.name
    # Where the data is and how it is loaded do not change a run.
    moved = tiny(**{"data.manual_dir": "/elsewhere", "data.num_workers": 0})
    assert runs.make_job(moved, {"method": "mgr"}, 0).name == same.name
    assert runs.get_lambda(runs.make_job(base, {"method": "pcr"}, 0,
                                         lambda_map={"pcr": 0.3}).config) == 0.3


def test_lambda_choice_takes_the_best_validation_and_skips_failed_runs():
    assert sweep_lambda.choose_lambda({0.1: 50.0, 0.2: 60.0, 0.3: 60.0,
                                       0.4: float("nan")}) == 0.2
    assert sweep_lambda.choose_lambda({0.5: float("nan")}) is None
    assert sweep_lambda.swept_method("mgr") == "pcr"
    assert sweep_lambda.swept_method("mgr", mps_from_uniform=False) == "mgr"


def test_command_line_parses_in_process(tmp_path):
    argv = ["table1", "--config=configs/default.py", f"--workdir={tmp_path}", "--seeds=0,2",
            "--methods=base,gda", "--config.num_epochs=1", "--config.model.width=0.125",
            "--configs=configs/default.py,configs/default.py", "--subset_fractions=0.3"]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        kwargs = cli.parse_command_line(table1, argv)
    finally:
        os.chdir(cwd)
    assert kwargs["seeds"] == [0, 2] and kwargs["methods"] == ["base", "gda"]
    assert kwargs["config"].model.width == 0.125
    assert [c.model.width for c in kwargs["configs"]] == [0.125, 0.125]  # overrides reach all
    columns = table1.make_columns(kwargs["config"], kwargs["configs"], kwargs["subset_fractions"])
    assert [c[0] for c in columns] == ["Digits 30%", "Digits 30% (2)"]


def test_command_runs_as_a_module(tmp_path):
    """`python -m mgr_jax.experiments.<name>` parses its flags (dry run: nothing trains)."""
    out = subprocess.run(
        [sys.executable, "-m", "mgr_jax.experiments.ablation_update",
         "--config=configs/default.py", f"--workdir={tmp_path}", "--seeds=0",
         "--variants=base,max_pcr", "--config.generator.kind=random", "--dry_run"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "planned  digits-base-s0-" in out.stdout
    assert "mps.finder_update=max_pcr" in out.stdout
    assert not os.path.exists(tmp_path / "runs")


# ----------------------------------------------------------------------------- real training

def test_table1_trains_tabulates_and_skips_finished_runs(tmp_path, pool):
    out = table1.run(tiny(), str(tmp_path), seeds=(0,), methods=("base", "gda"), runs_dir=pool)
    cells = _check_cells(out["paths"]["table1"], out["jobs"])
    assert set(cells) == {("Base Model", "Digits"), ("GDA", "Digits")}
    assert all(0 <= c["mean"] <= 100 for c in cells.values())
    md = open(out["paths"]["markdown"]).read()
    assert "| Method / Dataset | Digits |" in md and "| GDA |" in md
    runs = open(out["paths"]["runs"]).read().splitlines()
    assert runs[0].startswith("name,row,column,seed,status") and len(runs) == 3
    # Again: every run is finished, nothing is trained and results.json stays as it was.
    mtimes = [os.path.getmtime(os.path.join(j.workdir, "results.json")) for j in out["jobs"]]
    counter = FakeTrainer()
    again = table1.run(tiny(), str(tmp_path), seeds=(0,), methods=("base", "gda"),
                       runs_dir=pool, trainer=counter)
    assert counter.calls == []
    assert [j.status for j in again["jobs"]] == ["done", "done"]
    assert mtimes == [os.path.getmtime(os.path.join(j.workdir, "results.json"))
                      for j in out["jobs"]]


def test_sweep_lambda_chooses_on_validation_and_reruns_the_final_seeds(tmp_path, pool):
    # The base config's lambda reuses table1's gda run; 0.5 trains one more.
    lambdas = sorted({runs.get_lambda(tiny()), 0.5})
    out = sweep_lambda.run(tiny(), str(tmp_path), seeds=(0,), methods=("base", "gda"),
                           lambdas=lambdas, runs_dir=pool)
    sweep = tables.read_table_csv(out["paths"]["sweep_lambda"])
    assert set(sweep) == {("GDA", f"λ={lam:g}") for lam in lambdas}
    val = {lam: sweep[("GDA", f"λ={lam:g}")]["mean"] for lam in lambdas}
    assert out["chosen"] == {"gda": sweep_lambda.choose_lambda(val)}
    with open(out["paths"]["chosen"]) as f:
        assert json.load(f) == out["chosen"]
    final = tables.read_table_csv(out["paths"]["sweep_lambda_final"])
    assert final[("GDA", "chosen λ")]["mean"] == out["chosen"]["gda"]
    assert np.isnan(final[("Base Model", "chosen λ")]["mean"])
    final_jobs = [j for j in out["jobs"] if j.column == "final"]
    gda_final = next(j for j in final_jobs if j.config.method == "gda")
    assert final[("GDA", "Test top-1")]["mean"] == pytest.approx(_results(gda_final)["test_top1"])
    assert final[("GDA", "Val top-1")]["mean"] == pytest.approx(max(val.values()), rel=1e-5)
    # The final seed-0 run is the sweep's run at the chosen lambda, not trained twice.
    assert gda_final.status == "done"


def test_augment_table(tmp_path, pool):
    # "none" reuses table1's runs; base + TrivialAugment trains for real, gda's is faked.
    trainer = FakeTrainer(real_methods=("base",))
    out = augment.run(tiny(), str(tmp_path), seeds=(0,), augments=("none", "trivialaugment"),
                      methods=("base", "gda"), runs_dir=pool, trainer=trainer)
    cells = _check_cells(out["paths"]["augment"], out["jobs"])
    assert set(cells) == {(a, m) for a in ("None", "TrivialAugment")
                          for m in ("Base Model", "+GDA")}


def test_figures(tmp_path, pool):
    trainer = FakeTrainer(save_checkpoints=True, real_methods=("base", "gda", "pcr"))
    out = figures.run(tiny(), str(tmp_path), seeds=(0,), umap_methods=("gda", "mgr"),
                      feature_epochs=(1, 5), fd_samples=64, embed_samples=48,
                      embedding="pca", num_class_samples=4, runs_dir=pool, trainer=trainer)
    assert set(out["figures"]) == {"fig5", "fig6a", "fig6b", "fig7"}
    for path in out["figures"].values():
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    val = tables.read_table_csv(out["paths"]["figures_val_loss"])
    assert set(val) == {("1", "Uniform (PCR)"), ("1", "MPS (MGR (PCR+MPS))")}
    assert val[("1", "MPS (MGR (PCR+MPS))")]["mean"] == 2.0  # FakeTrainer's val_loss
    fd = tables.read_table_csv(out["paths"]["figures_frechet"])
    assert all(np.isfinite(c["mean"]) and c["mean"] >= 0 for c in fd.values()) and len(fd) == 2
    # Only the MPS run was faked, and trained in a piece that ends at its snapshot epoch.
    assert [c[2] for c in trainer.calls if c[0] == "mgr"] == [1]
    mgr = next(j for j in out["jobs"] if j.config.method == "mgr")
    snap = [d for d in os.listdir(mgr.workdir) if d.startswith("figure_snapshots-")]
    data = np.load(os.path.join(mgr.workdir, snap[0], "features_e0001.npz"))
    assert data["real"].shape[0] == 48 and data["synthetic"].shape[0] == 48


# ----------------------------------------------------------------------------- MPS commands

def test_compare_hypergrad(tmp_path):
    trainer = FakeTrainer()
    out = compare_hypergrad.run(tiny(num_epochs=2), str(tmp_path), seeds=(0, 1),
                                trainer=trainer)
    assert len(trainer.calls) == 6  # exact, finite difference, diagnostic x 2 seeds
    main = tables.read_table_csv(out["paths"]["compare_hypergrad"])
    exact, fd = compare_hypergrad.ARMS[0][1], compare_hypergrad.ARMS[1][1]
    arms = {hg: [j for j in out["jobs"] if j.column == hg] for hg in ("exact",
                                                                      "finite_difference")}
    for hg, label in compare_hypergrad.ARMS:
        want = [_results(j)["test_top1"] for j in sorted(arms[hg], key=lambda j: j.seed)]
        np.testing.assert_allclose(main[(label, "Test top-1 (%)")]["values"], want, rtol=1e-5)
        assert not any(j.config.mps.log_hypergrad_cosine for j in arms[hg])
    assert main[(exact, "Step time (ms)")]["mean"] == pytest.approx(1000.0)
    assert main[(fd, "Step time (ms)")]["mean"] == pytest.approx(800.0)
    ratio = main[("exact / finite difference", "Step time (ms)")]
    assert ratio["mean"] == pytest.approx(1.25) and ratio["std"] == pytest.approx(0.0)
    assert main[("exact / finite difference", "Wall-clock (s)")]["mean"] == pytest.approx(1.25)
    agree = tables.read_table_csv(out["paths"]["compare_hypergrad_agreement"])
    assert agree[("MGR (PCR+MPS)", "cos(exact, FD)")]["mean"] == pytest.approx(0.915)
    assert agree[("MGR (PCR+MPS)", "min epoch cos")]["mean"] == pytest.approx(0.91)
    assert agree[("MGR (PCR+MPS)", "‖exact‖ / ‖FD‖")]["mean"] == pytest.approx(1.1)
    assert agree[("MGR (PCR+MPS)", "logging overhead (×)")]["mean"] == pytest.approx(2.0)
    per_epoch = open(out["paths"]["per_epoch"]).read().splitlines()
    assert per_epoch[0] == "method,seed,epoch,cosine,norm_ratio_exact_over_fd"
    assert len(per_epoch) == 1 + 2 * 2


def test_ablation_finder(tmp_path):
    trainer = FakeTrainer()
    out = ablation_finder.run(tiny(), str(tmp_path), seeds=(0, 1),
                              variants=("pcr", "linear"), trainer=trainer)
    cells = _check_cells(out["paths"]["ablation_finder"], out["jobs"],
                         {"Test top-1 (%)": "test_top1", "Val top-1 (%)": "val_top1"})
    assert set(r for r, _ in cells) == {"Without MPS (PCR)", "MPS with Linear F_φ"}
    linear = [j for j in out["jobs"] if j.row == "MPS with Linear F_φ"]
    assert all(j.config.finder.arch == "linear" and j.config.method == "mgr" for j in linear)


def test_ablation_update_and_a_half_done_run_resumes(tmp_path):
    trainer = FakeTrainer()
    # A run interrupted after epoch 1 of 2 (no results.json) goes back to the trainer.
    config = tiny(num_epochs=2)
    job = runs.make_job(config, ablation_update.VARIANTS["max_ce"][1], 0)
    workdir = os.path.join(str(tmp_path), "runs", job.name)
    assert trainer(job.config, workdir, max_epochs_this_run=1) is None
    out = ablation_update.run(config, str(tmp_path), seeds=(0,),
                              variants=("max_ce", "max_pcr"), trainer=trainer)
    assert [c[0] for c in trainer.calls] == ["mgr", "mgr", "mgr"]
    assert len(runs.read_metrics(workdir)) == 2  # resumed at epoch 2, not restarted
    _check_cells(out["paths"]["ablation_update"], out["jobs"],
                 {"Test top-1 (%)": "test_top1", "Val top-1 (%)": "val_top1"})
    rows = [j.config.mps.finder_update for j in out["jobs"]]
    assert rows == ["max_ce", "max_pcr"]


def test_snapshots_are_taken_between_training_pieces(tmp_path):
    trainer = FakeTrainer(save_checkpoints=True)
    config = tiny(num_epochs=3, method="mgr")
    job = runs.make_job(config, {}, 0)
    job.workdir = str(tmp_path / job.name)
    settings = {"embed_samples": 8, "fd_samples": 16, "fd_space": "self", "metric": None}
    snaps = snapshots.Snapshots(job, "k", feature_epochs=(2,), fd_epochs=(1, 3),
                                settings=settings)
    probe = Probe(job.config, num_synthetic=16)
    try:
        result = snapshots.train_with_snapshots(job, snaps, probe, trainer)
    finally:
        probe.close()
    assert result["num_epochs"] == 3
    assert [c[2] for c in trainer.calls] == [1, 1, 1]
    assert sorted(snaps.frechet()) == [1, 3] and snaps.has(2)


# ----------------------------------------------------------------------------- slow (opt-in)

@pytest.mark.slow
def test_compare_hypergrad_with_real_mgr_runs(tmp_path):
    """Three real MGR runs (minutes of compilation on a CPU): the logged agreement is real."""
    out = compare_hypergrad.run(tiny(), str(tmp_path), seeds=(0,))
    agree = tables.read_table_csv(out["paths"]["compare_hypergrad_agreement"])
    cos = agree[("MGR (PCR+MPS)", "cos(exact, FD)")]["mean"]
    assert -1.0 <= cos <= 1.0
    assert agree[("MGR (PCR+MPS)", "‖exact‖ / ‖FD‖")]["mean"] > 0
    assert agree[("MGR (PCR+MPS)", "logging overhead (×)")]["mean"] > 0
    main = tables.read_table_csv(out["paths"]["compare_hypergrad"])
    assert main[("exact / finite difference", "Step time (ms)")]["mean"] > 0


@pytest.mark.slow
def test_umap_embedding():
    xy = plots.embed_2d(np.random.default_rng(0).normal(size=(60, 8)), "umap")
    assert xy.shape == (60, 2) and np.all(np.isfinite(xy))
