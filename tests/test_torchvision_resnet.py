"""converters.torchvision_resnet against a real torchvision ResNet-18 and synthetic state_dicts."""
import logging
import lzma
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from converters import pickle_writer
from converters import torch_pickle as tp
from converters import torchvision_resnet as tvr
from mgr_jax.variables_io import load_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Parameter counts of torchvision.models.resnet{18,34,50}(num_classes=1000).
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}


@pytest.fixture
def r18(fixtures_dir, tmp_path):
    """(path of the decompressed fixture .pth, reference outputs)."""
    path = tmp_path / "r18.pth"
    with lzma.open(os.path.join(fixtures_dir, "tv_resnet18_c10_hw64.pth.xz")) as f:
        path.write_bytes(f.read())
    return path, np.load(os.path.join(fixtures_dir, "tv_resnet18_c10_hw64.npz"))


def _rel(got, want):
    return float(np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)))


def _nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


def _random_state_dict(arch, num_classes=10, width=1.0, cifar_stem=False, seed=0):
    r = np.random.default_rng(seed)
    out = {}
    for k, shape in tvr.torchvision_shapes(arch, num_classes, width, cifar_stem).items():
        if k.endswith("num_batches_tracked"):
            out[k] = np.array(3, np.int64)
        elif k.endswith("running_var"):
            out[k] = r.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            out[k] = r.normal(size=shape).astype(np.float32)
    return out


# --- the real torchvision file ------------------------------------------------------------------


def test_fixture_outputs_and_running_stats(r18):
    path, ref = r18
    module, variables = tvr.convert(path)
    assert module.num_classes == 10 and not module.cifar_stem and module.width == 1.0
    x = _nhwc(ref["x_nchw"])
    logits, feats = module.apply(variables, x, train=False)
    assert _rel(logits, ref["logits_eval"]) < 1e-4
    assert _rel(feats, ref["features_eval"]) < 1e-4
    (logits_t, _), upd = module.apply(variables, x, train=True, mutable=["batch_stats"])
    assert _rel(logits_t, ref["logits_train"]) < 1e-4
    bn1 = upd["batch_stats"]["bn1"]
    np.testing.assert_allclose(bn1["mean"], ref["bn1_running_mean_after"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn1["var"], ref["bn1_running_var_after"], rtol=1e-4, atol=1e-6)
    # The layout map, spelled out on one key of each kind.
    sd = tp.load(path)
    np.testing.assert_array_equal(variables["params"]["layer2_0"]["downsample_0"]["kernel"],
                                  sd["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(variables["batch_stats"]["layer2_0"]["downsample_1"]["var"],
                                  sd["layer2.0.downsample.1.running_var"])
    np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], sd["fc.weight"].T)
    np.testing.assert_array_equal(variables["params"]["bn1"]["scale"], sd["bn1.weight"])


def test_torchvision_shapes_match_real_file_and_published_counts(r18):
    sd = tp.load(r18[0])
    want = tvr.torchvision_shapes("resnet18", num_classes=10)
    assert list(sd) == list(want)
    assert {k: tuple(v.shape) for k, v in sd.items()} == want
    for arch, count in TORCHVISION_PARAMS.items():
        shapes = tvr.torchvision_shapes(arch)
        assert sum(int(np.prod(s)) for k, s in shapes.items()
                   if "running" not in k and "num_batches" not in k) == count


def test_num_classes_override_keeps_all_but_fc(r18, caplog):
    sd = tp.load(r18[0])
    _, base = tvr.convert_state_dict(sd)
    with caplog.at_level(logging.WARNING, logger="converters.torchvision_resnet"):
        module, variables = tvr.convert_state_dict(sd, num_classes=7, source="r18.pth")
    assert any("re-initialised fc for num_classes=7" in r.getMessage() for r in caplog.records)
    assert module.num_classes == 7
    assert variables["params"]["fc"]["kernel"].shape == (512, 7)
    assert variables["params"]["fc"]["bias"].shape == (7,)
    drop_fc = lambda v: {c: {k: t for k, t in v[c].items() if k != "fc"} for c in v}  # noqa
    jax.tree.map(np.testing.assert_array_equal, drop_fc(variables), drop_fc(base))
    _, again = tvr.convert_state_dict(sd, num_classes=7)  # deterministic PRNG key
    np.testing.assert_array_equal(again["params"]["fc"]["kernel"],
                                  variables["params"]["fc"]["kernel"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="converters.torchvision_resnet"):
        tvr.convert_state_dict(sd, num_classes=10)
    assert not caplog.records


def test_cli_round_trip(r18, tmp_path, capsys):
    path, ref = r18
    out = tmp_path / "converted"
    assert tvr.main([str(path), str(out)]) == 0
    assert "resnet18" in capsys.readouterr().out
    variables, meta = load_variables(out)
    assert meta["kind"] == "torchvision_resnet" and meta["arch"] == "resnet18"
    assert meta["num_classes"] == 10 and meta["width"] == 1.0 and meta["cifar_stem"] is False
    assert meta["source"] == os.path.abspath(path)
    module = tvr.module_from_meta(meta)
    direct_module, direct = tvr.convert(path)
    assert module == direct_module  # same architecture, so same outputs for same variables
    jax.tree.map(np.testing.assert_array_equal, variables, direct)
    x = _nhwc(ref["x_nchw"])
    assert tvr.check_compatible(variables, module, x.shape) == ""
    assert tvr.main([str(path), str(tmp_path / "c100"), "--num_classes", "100"]) == 0
    v100, meta100 = load_variables(tmp_path / "c100")
    assert meta100["num_classes"] == 100 and v100["params"]["fc"]["kernel"].shape == (512, 100)
    msg = tvr.check_compatible(v100, module, x.shape)
    assert "params/fc/kernel (512, 100) (model expects (512, 10))" in msg and "\n" not in msg


# --- synthetic ResNet-34 / 50 -------------------------------------------------------------------


@pytest.mark.parametrize("arch,width,cifar_stem,legacy", [
    ("resnet34", 0.25, False, False), ("resnet50", 0.125, True, True)])
def test_synthetic_files_convert_every_key(tmp_path, arch, width, cifar_stem, legacy):
    sd = _random_state_dict(arch, num_classes=5, width=width, cifar_stem=cifar_stem)
    path = tmp_path / f"{arch}.pth"
    pickle_writer.save(path, sd, legacy=legacy)
    module, variables = tvr.convert(path)
    assert tvr.infer_config(sd)["arch"] == arch
    assert module.block.__name__ == ("Bottleneck" if arch == "resnet50" else "BasicBlock")
    assert module.width == width and module.cifar_stem == cifar_stem and module.num_classes == 5
    used = sum(v.size for v in jax.tree.leaves(variables))
    assert used == sum(v.size for k, v in sd.items() if "num_batches" not in k)
    conv = "conv2" if arch == "resnet34" else "conv3"
    np.testing.assert_array_equal(variables["params"]["layer4_2"][conv]["kernel"],
                                  sd[f"layer4.2.{conv}.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(variables["batch_stats"]["layer3_0"]["downsample_1"]["mean"],
                                  sd["layer3.0.downsample.1.running_mean"])
    # Shapes only (tracing, no compilation): a forward pass runs on the real ResNet-18 above.
    logits, feats = jax.eval_shape(module.apply, variables, np.zeros((1, 16, 16, 3), np.float32))
    assert logits.shape == (1, 5) and feats.shape == (1, int(512 * width) * (
        4 if arch == "resnet50" else 1))


@pytest.mark.parametrize("arch", ["resnet34", "resnet50"])
def test_full_size_key_coverage(arch):
    """Full-size torchvision layouts (zero-stride arrays: no memory) map onto the modules."""
    sd = {k: np.broadcast_to(np.float32(0.5), s)
          for k, s in tvr.torchvision_shapes(arch, num_classes=1000).items()}
    module = tvr.build_module(arch, 1000)
    variables, problems = tvr._map_state_dict(module, sd)
    assert problems == []
    n = sum(int(np.prod(np.shape(v))) for v in jax.tree.leaves(variables["params"]))
    assert n == TORCHVISION_PARAMS[arch]


def test_wrapped_and_data_parallel_state_dicts():
    sd = _random_state_dict("resnet18", width=0.125)
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}
    module, variables = tvr.convert_state_dict(wrapped)
    np.testing.assert_array_equal(variables["params"]["fc"]["bias"], sd["fc.bias"])


# --- errors ---------------------------------------------------------------------------------------


def test_mismatch_errors_list_differences():
    small = 0.125
    r50 = _random_state_dict("resnet50", width=small)
    basic = tvr.build_module("resnet18", 10, width=small)
    with pytest.raises(ValueError) as e:
        tvr.variables_for(basic, r50)
    msg = str(e.value)
    assert "BasicBlock" in msg and "looks like resnet50 (Bottleneck" in msg
    assert "unexpected keys" in msg and "conv3" in msg and "wrong shapes" in msg
    assert "\n" not in msg
    r18 = _random_state_dict("resnet18", width=small)
    del r18["layer1.0.bn1.running_var"]
    r18["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"missing keys 1: layer1\.0\.bn1\.running_var.*"
                                         r"unexpected keys 1: extra\.weight"):
        tvr.variables_for(basic, r18)
    r18 = _random_state_dict("resnet18", num_classes=100, width=small)
    with pytest.raises(ValueError, match=r"wrong shapes 2: .*fc\.weight \(100, 64\) "
                                         r"\(model expects \(10, 64\)\)"):
        tvr.variables_for(basic, r18)
    with pytest.raises(ValueError, match="not a torchvision ResNet"):
        tvr.convert_state_dict({"a.weight": np.zeros(2, np.float32)})


def test_malicious_and_truncated_files(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = {"conv1.weight": pickle_writer.Reduce(pickle_writer.Global("os", "system"), (f"touch {marker}",))}
    bad = tmp_path / "evil.pth"
    pickle_writer.save(bad, evil)
    with pytest.raises(tp.UnsafePickleError, match=r"os\.system"):
        tvr.convert(bad)
    assert tvr.main([str(bad), str(tmp_path / "out")]) == 2  # issue 18: exit status 2, as the main job
    assert "refusing to load os.system" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()
    good = tmp_path / "good.pth"
    pickle_writer.save(good, _random_state_dict("resnet18", width=0.125))
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:-5000])
    with pytest.raises(tp.CheckpointFormatError, match="cut.pth"):
        tvr.convert(cut)
    assert tvr.main([str(cut), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cut.pth" in err and err.count("\n") == 1


def test_cli_bad_path_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "converters.torchvision_resnet",
                           str(tmp_path / "missing.pth"), str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: checkpoint not found: {tmp_path / 'missing.pth'}"]
