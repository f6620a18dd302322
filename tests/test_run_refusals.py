"""The training run's refusals and recoveries: one run per workdir, every late error refused before
config.json exists, data checked before training, recovery from damaged files, DTD's classes.

Each test makes the damage itself (a second process, a torn line, garbage in a checkpoint, a
text file named .jpg) and checks the one-line message and what is on disk afterwards.
"""
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types

import jax
import ml_collections
import numpy as np
import pytest
from absl import flags
from PIL import Image

from configs import default
from configs.default import SHIPPED_GENERATOR
from mgr_jax import variables_io
from mgr_jax.data import datasets
from mgr_jax.data.datasets import dtd, imagefolder
from mgr_jax.errors import UserError
from mgr_jax.experiments import runs
from mgr_jax.run import checkpoints, config_lib, main, run_log, train, workdir as workdir_lib
from tests.helpers import tiny_config
from tests.test_datasets import _image_folder, _jpeg, _tar, _text, make_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(**overrides):
    """tests.helpers.tiny_config with a ResNet-10 (the runs here compile in half the time)."""
    return tiny_config(**{"model.arch": "resnet10", **overrides})


def _refused(config, workdir, match, seconds=10.0):
    """The UserError of train_and_evaluate, after checking it is one line, comes within
    `seconds` and leaves no config.json behind."""
    start = time.time()
    with pytest.raises(UserError, match=match) as err:
        train.train_and_evaluate(config, str(workdir))
    assert time.time() - start < seconds
    assert "\n" not in str(err.value)
    assert not os.path.exists(os.path.join(str(workdir), "config.json"))
    return str(err.value)


# ----------------------------------------------------------------- late errors, now early


@pytest.mark.parametrize("override,match", [
    ({"model.arch": "resnet19"}, "model.arch='resnet19' is not valid"),
    ({"data.test_fraction": 0.0}, r"data.test_fraction=0.0 must be in \(0, 1\)"),
    ({"data.test_fraction": 1.5}, r"data.test_fraction=1.5 must be in \(0, 1\)"),
    ({"optimizer.lr_decay": float("nan")}, "optimizer.lr_decay=nan must be a finite number"),
    ({"batch_size": 10 ** 7}, r"batch_size=10000000 .*needs at least .* GiB"),
    ({"mps.hypergradient": "foo"}, "mps.hypergradient='foo' is not valid"),
    ({"model.init_checkpoint": os.path.join(ROOT, "README.md")},
     "README.md' is a file, not a converted weights directory"),
    ({"method": "pcr", "generator.kind": "stylegan2_ada", "generator.checkpoint":
      SHIPPED_GENERATOR, "generator.kwargs": {"kwargs_json": "G.json"}},
     r"\['kwargs_json'\] only apply when an original file is converted"),
    ({"method": "pcr", "generator.kind": "stylegan2_ada", "generator.checkpoint":
      SHIPPED_GENERATOR, "generator.kwargs": {"truncation_psi": "0.7"}},
     "truncation_psi='0.7' must be a finite number"),
    ({"method": "pcr", "generator.kind": "stylegan2_ada", "generator.checkpoint":
      SHIPPED_GENERATOR, "generator.kwargs": {"noise_mode": "random"}},
     "noise_mode='random' must be 'const' or 'none'"),
])
def test_late_errors_are_refused_before_config_json(tmp_path, override, match):
    _refused(tiny_config(**override), tmp_path / "run", match)
    assert not (tmp_path / "run").exists()


def test_schema_is_the_default_config():
    """Every field of configs/default.py is validated, and no other (a new field needs an
    entry in config_lib.SCHEMA, or every run with it is refused as unknown)."""
    def leaves(tree, prefix=""):
        out = set()
        for key, value in tree.items():
            nested = isinstance(value, dict) and key != "kwargs"
            out |= leaves(value, f"{prefix}{key}.") if nested else {f"{prefix}{key}"}
        return out
    assert leaves(default.get_config().to_dict()) == leaves(config_lib.SCHEMA)
    config_lib.validate(default.get_config())


def test_generator_kwargs_follow_the_loader_signature(tmp_path):
    snapshot = tmp_path / "network-snapshot.pkl"  # only its existence is checked up front
    snapshot.write_bytes(b"")
    edm = {"method": "pcr", "generator.kind": "edm", "generator.checkpoint": str(snapshot)}
    for kwargs, match in (({"num_steps": "2"}, "num_steps='2' must be an integer"),
                          ({"num_steps": 1}, "num_steps=1 must be at least 2"),
                          ({"num_stepz": 2}, r"takes no \['num_stepz'\] \(it takes num_steps")):
        with pytest.raises(UserError, match=match):
            config_lib.validate(tiny_config(**edm, **{"generator.kwargs": kwargs}))
    config_lib.validate(tiny_config(**edm, **{"generator.kwargs": {"num_steps": 4, "rho": 7}}))


def test_unknown_and_badly_typed_fields(tmp_path):
    config = tiny_config()
    config.data.image_sise = 16  # a misspelling on an unlocked config (library use)
    _refused(config, tmp_path / "run", "config field data.image_sise is not known .*image_size")
    values = tiny_config().to_dict()  # a config built from a dict skips ConfigDict's types
    values["keep_best_checkpoint"], values["model"]["width"] = True, "0.25"
    _refused(ml_collections.ConfigDict(values), tmp_path / "run",
             "model.width='0.25' must be a finite number")


def _parse(argv):
    fv = flags.FlagValues()
    main.define_flags(fv, sys_argv=argv)
    return main.parse(argv, fv)


def test_flag_errors_are_one_line(tmp_path):
    base = ["main", "--config=configs/default.py", f"--workdir={tmp_path}/run"]
    for extra, match in (("--config.no_such_field=1", "no field 'no_such_field'"),
                         ("--config.data.image_sise=3", "no field 'image_sise'"),
                         ("--config.seed=abc", "--config.seed=abc"),
                         ("--config=configs/nonexist.py", "No such file")):
        with pytest.raises(UserError, match=match) as err:
            _parse(base + [extra])
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("body,match", [
    ("def get_config():\n    return None\n", "get_config\\(\\) returned None, not a ConfigDict"),
    ("x = 1\n", "it defines no get_config"),
    ("def get_config():\n    return 1 / 0\n", "ZeroDivisionError"),
    ("def get_config():\n    return get_config()\n", "RecursionError"),
    ("def get_config():\n    raise KeyError('boom')\n", "KeyError: 'boom'"),
    ("fifo", "is not a regular file"),
])
def test_config_files_that_fail_are_one_line(tmp_path, body, match):
    path = str(tmp_path / "config.py")
    if body == "fifo":
        os.mkfifo(path)  # would block the reader forever
    else:
        with open(path, "w") as f:
            f.write(body)
    with pytest.raises(UserError, match=match) as err:
        _parse(["main", f"--config={path}", f"--workdir={tmp_path}/run"])
    assert "\n" not in str(err.value) and not os.path.exists(tmp_path / "run")


def test_cli_unknown_field_is_one_line_and_exit_2(tmp_path):
    cmd = [sys.executable, "-m", "mgr_jax.main", "--config=configs/default.py",
           f"--workdir={tmp_path}/run", "--config.no_such_field=1"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "--config.no_such_field=1" in lines[0], p.stderr
    assert not os.path.exists(f"{tmp_path}/run")


# ------------------------------------------------------------------------------- workdir


def _read_only(path):
    """chmod a-w, and (as root, whom permissions do not stop) run as `nobody` meanwhile."""
    os.chmod(path, 0o555)
    if os.geteuid() == 0:
        os.seteuid(65534)


def _writable_again(path):
    if os.geteuid() != os.getuid():
        os.seteuid(os.getuid())
    os.chmod(path, 0o755)


@pytest.fixture
def open_tmp():
    """A temporary folder every user may traverse (pytest's are private to their owner)."""
    path = tempfile.mkdtemp()
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("case", ["file", "read_only", "corrupt_config", "config_list"])
def test_unusable_workdir_is_one_line(open_tmp, case):
    workdir = os.path.join(open_tmp, "run")
    if case == "file":
        with open(workdir, "w") as f:
            f.write("not a folder")
        match = "is a file, not a folder"
    else:
        os.mkdir(workdir)
        text = {"corrupt_config": '{"method": "ba', "config_list": "[1, 2]"}.get(case)
        if text is not None:
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write(text)
        match = {"corrupt_config": "config.json cannot be read",
                 "config_list": "holds a JSON list", "read_only": "is not writable"}[case]
    if case == "read_only":
        _read_only(workdir)
    try:
        start = time.time()
        with pytest.raises(UserError, match=match) as err:
            train.train_and_evaluate(tiny_config(), workdir)
        assert time.time() - start < 10 and "\n" not in str(err.value)
    finally:
        if case == "read_only":
            _writable_again(workdir)
    if case != "file":
        assert sorted(os.listdir(workdir)) == (["config.json"] if "config" in case else [])


def test_a_locked_workdir_is_refused_at_once(tmp_path):
    workdir = str(tmp_path / "run")
    config = tiny_config()
    with workdir_lib.RunLock(workdir, config_lib.to_dict(config)):  # "another run"
        saved = open(os.path.join(workdir, "config.json")).read()
        start = time.time()
        with pytest.raises(UserError, match=r"in use by another run \(process \d+ .*run.lock"):
            train.train_and_evaluate(config, workdir)  # even the same config: no resume
        assert time.time() - start < 5  # before setup: no data, no model
        assert open(os.path.join(workdir, "config.json")).read() == saved
        assert sorted(os.listdir(workdir)) == ["config.json", "run.lock"]
    with workdir_lib.RunLock(workdir, config_lib.to_dict(config)):  # released: usable again
        pass


# -------------------------------------------------------------------------- image folders


def _folder_config(root, **overrides):
    return tiny_config(**{"data.name": "imagefolder", "data.manual_dir": str(root),
                          "data.num_workers": 0, "data.num_threads": 2, **overrides})


def _png(size=(6, 5)):
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("damage", ["truncated_jpeg", "text_as_jpg", "empty_png"])
def test_damaged_image_is_refused_before_training(tmp_path, damage):
    root = tmp_path / "folder"
    _image_folder(str(root), [6, 6, 6])
    if damage == "truncated_jpeg":
        whole = _jpeg(1, 2, (64, 48))
        bad, data = root / "class_1" / "img_002.jpg", whole[:len(whole) * 2 // 3]
    elif damage == "text_as_jpg":
        bad, data = root / "class_2" / "notes.jpg", b"these are not pixels\n"
    else:
        bad, data = root / "class_0" / "empty.png", b""
    bad.write_bytes(data)
    message = _refused(_folder_config(root), tmp_path / "run", "imagefolder: ")
    assert str(bad) in message and "replace or remove it" in message
    assert not (tmp_path / "run").exists()
    assert not (root / imagefolder.CHECKED_FILE).exists()  # a failed check is not remembered


def test_image_check_is_cached_beside_the_dataset(tmp_path, monkeypatch):
    root = tmp_path / "folder"
    _image_folder(str(root), [5, 5, 5])
    (root / "class_0" / "extra.png").write_bytes(_png())
    decoded = []
    real = imagefolder.decode_problem
    monkeypatch.setattr(imagefolder, "decode_problem",
                        lambda path: decoded.append(os.path.relpath(path, root)) or real(path))
    config = make_config("imagefolder", root)
    datasets.load_splits(config)
    assert len(decoded) == 16 and (root / imagefolder.CHECKED_FILE).exists()
    decoded.clear()
    datasets.load_splits(config)
    assert decoded == []  # paid once
    (root / "class_2" / "new.png").write_bytes(_png())
    os.utime(root / "class_1" / "img_000.jpg", ns=(1, 1))  # "changed" in place
    datasets.load_splits(config)
    assert sorted(decoded) == ["class_1/img_000.jpg", "class_2/new.png"]  # only what changed
    decoded.clear()
    (root / "class_2" / "new.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(UserError, match="class_2/new.png does not decode"):
        datasets.load_splits(config)
    assert decoded == ["class_2/new.png"]


def test_too_few_images_per_class_are_refused_with_the_numbers(tmp_path):
    root = tmp_path / "folder"
    _image_folder(str(root), [2, 2, 2])
    config = _folder_config(root, **{"data.subset_fraction": 1.0})
    message = _refused(config, tmp_path / "run", "class 'class_0' has 2 images")
    assert "1 for the test split (data.test_fraction=0.2), 1 for D and 0 for D_val" in message
    assert "needs at least 3 images" in message
    _image_folder(str(root), [3, 3, 3])  # one more each: enough
    splits = datasets.load_splits(make_config("imagefolder", root))
    assert len(splits.test_indices) == 3


# --------------------------------------------------------------------------------- DTD


def test_dtd_classes_are_the_image_folders(tmp_path):
    """Lists that never mention 'banded' (the first class) must not shift the labels."""
    classes = sorted(["banded", "blotchy", "braided"] + [f"texture{i:02d}" for i in range(44)])
    members, lists = {}, {"train1": [], "val1": [], "test1": []}
    for c, name in enumerate(classes):
        for part in lists:
            path = f"{name}/{name}_{part}.jpg"
            members[f"dtd/images/{path}"] = _jpeg(c, 0)
            if name != "banded":
                lists[part].append(path)
    for part, lines in lists.items():
        members[f"dtd/labels/{part}.txt"] = _text(lines)
    _tar(str(tmp_path / dtd.ARCHIVE), members)
    config = make_config("dtd", tmp_path)
    splits = dtd.load(config)
    assert splits.num_classes == 47 and splits.class_names[:3] == classes[:3]
    keys, labels = splits.train_source.keys, splits.train_source.labels
    for key, label in zip(keys, labels):
        assert splits.class_names[label] == key.split("/")[2]  # dtd/images/<class>/...
    assert 0 not in labels  # 'banded' has no images in the lists: it stays empty
    assert len(datasets.load_splits(config).train_indices) == 2 * 46


# ------------------------------------------------------------------------------ recovery


@pytest.fixture(scope="module")
def paused_run(tmp_path_factory):
    """A tiny run of 3 epochs paused after 2: checkpoints latest/2 and best/<=2."""
    workdir = str(tmp_path_factory.mktemp("paused") / "run")
    assert train.train_and_evaluate(_tiny(num_epochs=3), workdir, 2) is None
    return workdir


def _copy(src, tmp_path):
    dst = str(tmp_path / "run")
    shutil.copytree(src, dst)
    return dst


def _damage(workdir, which, step):
    with open(os.path.join(workdir, "checkpoints", which, str(step), "state", "_METADATA"),
              "w") as f:
        f.write('{"tree_metadata": ')


def test_damaged_latest_checkpoint_resumes_from_the_best_one(paused_run, tmp_path, capfd):
    workdir = _copy(paused_run, tmp_path)
    ckpt = checkpoints.RunCheckpoints(workdir)
    best = ckpt.best.latest_step()
    ckpt.close()
    _damage(workdir, "latest", 2)
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"kind": "train", "step": 3')  # and a run killed mid-line
    capfd.readouterr()
    result = train.train_and_evaluate(_tiny(num_epochs=3), workdir)
    err = capfd.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 2, err
    assert "checkpoints/latest/2 is damaged" in warnings[0]
    assert f"resuming from {workdir}/checkpoints/best/{best} (epoch {best})" in warnings[0]
    assert "torn last line" in warnings[1]
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "damaged", "latest_2"))
    assert result["num_epochs"] == 3
    records, torn = run_log.read_records(os.path.join(workdir, "metrics.jsonl"))
    assert not torn and [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3]


def test_no_good_checkpoint_is_one_line_and_moves_nothing(paused_run, tmp_path):
    workdir = _copy(paused_run, tmp_path)
    ckpt = checkpoints.RunCheckpoints(workdir)
    steps = {"latest": ckpt.latest.latest_step(), "best": ckpt.best.latest_step()}
    ckpt.close()
    for which, step in steps.items():
        _damage(workdir, which, step)
    message = _refused_resume(workdir)
    assert "is damaged" in message and "no other good checkpoint" in message
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "damaged"))
    with pytest.raises(UserError, match="checkpoints/best/.* is damaged"):
        train.restore_state(_tiny(num_epochs=3), workdir, which="best")


def _refused_resume(workdir):
    with pytest.raises(UserError) as err:
        train.train_and_evaluate(_tiny(num_epochs=3), workdir)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_torn_and_damaged_metrics_lines(tmp_path, capfd):
    path = tmp_path / "metrics.jsonl"
    good = [{"kind": "epoch", "step": 1, "epoch": 1}, {"kind": "epoch", "step": 2, "epoch": 2}]
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"kind": "tr')
    log = run_log.RunLog(str(tmp_path), keep=lambda r: r["epoch"] <= 1, tensorboard=False)
    assert log.records() == good[:1] and path.read_text() == json.dumps(good[0]) + "\n"
    assert "torn last line" in capfd.readouterr().err
    path.write_text("not json\n" + json.dumps(good[0]) + "\n")
    with pytest.raises(UserError, match="metrics.jsonl line 1 is not a JSON record"):
        run_log.RunLog(str(tmp_path), keep=lambda r: True, tensorboard=False)


def test_divergence_before_any_checkpoint_says_so(tmp_path, capfd):
    config = _tiny(**{"optimizer.lr": 1e30})  # inf within the first epoch
    workdir = str(tmp_path / "run")
    flags_ = types.SimpleNamespace(config=config, workdir=workdir, max_epochs_this_run=None,
                                   compilation_cache="off")  # keep the session's cache
    capfd.readouterr()
    assert main.run(flags_) == 3
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "NaN/inf at step" in lines[0]
    assert "No checkpoint was saved (it diverged in epoch 1" in lines[0]
    assert "checkpoints/latest" not in lines[0]
    ckpt = checkpoints.RunCheckpoints(workdir)
    assert ckpt.latest.latest_step() is None
    ckpt.close()


# ------------------------------------------------------------------- two runs, one workdir


def _cli_run(workdir, seed):
    """_tiny()'s run (the programs the tests above compiled) for 200 epochs, on the CLI."""
    tiny = ["method=base", "model.arch=resnet10", "num_epochs=200", "batch_size=32",
            "synthetic_batch_size=16", "eval_batch_size=128", "data.image_size=8",
            "data.subset_fraction=0.3", "model.width=0.125", "optimizer.lr_milestones=(1,)",
            "log_every_steps=5", "generator.kind=random", "generator.resolution=8"]
    cmd = [sys.executable, "-m", "mgr_jax.main", "--config=configs/default.py",
           f"--workdir={workdir}", f"--config.seed={seed}"] + [f"--config.{x}" for x in tiny]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_two_concurrent_runs_on_one_workdir(tmp_path):
    workdir = str(tmp_path / "run")
    procs = {seed: _cli_run(workdir, seed) for seed in (1, 2)}
    deadline = time.time() + 150
    while all(p.poll() is None for p in procs.values()) and time.time() < deadline:
        time.sleep(0.2)
    done = [s for s, p in procs.items() if p.poll() is not None]
    try:
        assert len(done) == 1, "neither run was refused"
        loser, winner = done[0], 3 - done[0]
        _, err = procs[loser].communicate()
        assert procs[loser].returncode == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "in use by another run" in lines[0], err
        assert os.path.join(workdir, "run.lock") in lines[0]
        assert procs[winner].poll() is None  # the other one trains on
        with open(os.path.join(workdir, "config.json")) as f:
            assert json.load(f)["seed"] == winner
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.communicate()
    # The lock died with its process: the workdir can be locked again.
    with workdir_lib.RunLock(workdir, json.load(open(os.path.join(workdir, "config.json")))):
        pass


def test_a_run_saved_before_later_fields_resumes_and_keeps_its_name(tmp_path):
    """A config.json written before the finder-optimiser fields existed matches today's
    config when those fields keep their old behaviour, and not when one is changed."""
    config = tiny_config(method="mgr")
    saved = config_lib.to_dict(config)
    for key in workdir_lib.LATER_FIELDS:
        section, field = key.split(".")
        del saved[section][field]
    checkpoints.write_config(str(tmp_path), saved)
    checkpoints.check_workdir_config(str(tmp_path), config_lib.to_dict(config))  # resumes
    changed = tiny_config(method="mgr", **{"mps.update_every": 4})
    with pytest.raises(UserError, match=r"mps.update_every \(None -> 4\)"):
        checkpoints.check_workdir_config(str(tmp_path), config_lib.to_dict(changed))
    # The run's name (its results pool key) is what it was before the fields existed.
    old = ml_collections.ConfigDict(saved)
    assert runs.config_hash(config) == runs.config_hash(old)
    assert runs.config_hash(changed) != runs.config_hash(old)
