"""BigGAN: G_ema.pth conversion, eval / train outputs against the official code, errors, CLI.

Tolerance atol 1e-4 on tanh images, as fixtures/README.md states (float32 vs float64 in the
reference differ by < 3e-6, so 1e-4 leaves room for op order but not for a wrong layer).
"""
import functools
import json
import os
import re
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from converters import biggan as conv
from converters import pickle_writer, torch_pickle
from converters.pickle_writer import Global, Reduce
from mgr_jax.generators import biggan
from mgr_jax.models import biggan as biggan_net

NAME = "biggan_cond10_res32"
KEEP = ("resolution", "n_classes", "G_ch", "dim_z", "shared_dim", "hier", "G_shared", "G_attn",
        "norm_style", "num_G_SVs", "num_G_SV_itrs", "bottom_width", "G_kernel_size", "BN_eps",
        "SN_eps")


def nhwc(a):
    """NCHW fixture array -> NHWC."""
    return np.transpose(a, (0, 2, 3, 1))


# conftest's fixtures_dir is function-scoped: cache the expensive parts by path instead.

@functools.lru_cache(maxsize=None)
def _fixture(fixtures):
    ref = dict(np.load(os.path.join(fixtures, NAME + ".npz")))
    meta = json.load(open(os.path.join(fixtures, NAME + ".json")))
    kwargs = {k: v for k, v in meta["G_kwargs"].items() if k in KEEP}
    module, variables = conv.convert(os.path.join(fixtures, NAME + ".G_ema.pth"), **kwargs)
    return ref, kwargs, module, variables


@functools.lru_cache(maxsize=None)
def _outputs(fixtures):
    """Eval image, and train-mode image with the updated buffers: two compiled programs."""
    ref, _, module, variables = _fixture(fixtures)
    img = jax.jit(module.apply)(variables, ref["z"], ref["y"])
    train = jax.jit(functools.partial(module.apply, train=True,
                                      mutable=["batch_stats", "spectral_norm"]))
    img_train, updates = train(variables, ref["z"], ref["y"])
    return img, img_train, updates


@pytest.fixture
def fx(fixtures_dir):
    """(reference arrays, official kwargs, module, variables, fixtures dir)."""
    return _fixture(fixtures_dir) + (fixtures_dir,)


def test_eval_image_matches_reference(fx):
    ref, fixtures = fx[0], fx[-1]
    img = _outputs(fixtures)[0]
    assert img.shape == (4, 32, 32, 3) and img.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(img), nhwc(ref["img"]), rtol=0, atol=1e-4)


def test_train_mode_image_matches_reference(fx):
    ref, fixtures = fx[0], fx[-1]
    img = _outputs(fixtures)[1]
    np.testing.assert_allclose(np.asarray(img), nhwc(ref["img_train"]), rtol=0, atol=1e-4)
    # Train mode differs from eval by up to 1.1 here: the test above is not passing by accident.
    assert np.max(np.abs(nhwc(ref["img_train"]) - nhwc(ref["img"]))) > 0.1


def test_train_mode_updates_buffers_when_mutable(fx):
    """Power steps leave unit-length u; BatchNorm stores PyTorch's momentum-0.1 unbiased stats."""
    fixtures = fx[-1]
    upd = _outputs(fixtures)[2]
    u = upd["spectral_norm"]["linear"]["u"]
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, rtol=1e-5)
    x = np.random.default_rng(0).normal(1.0, 2.0, (3, 4, 4, 5)).astype(np.float32)
    bn = biggan_net.OutputBN()
    v = bn.init(jax.random.key(0), x, train=False)
    v = {"params": v["params"], "batch_stats": {"mean": np.full(5, 0.5, np.float32),
                                                "var": np.full(5, 2.0, np.float32)}}
    y, new = bn.apply(v, x, train=True, mutable=["batch_stats"])
    flat = x.reshape(-1, 5)
    np.testing.assert_allclose(new["batch_stats"]["mean"], 0.9 * 0.5 + 0.1 * flat.mean(0),
                               rtol=1e-5)
    np.testing.assert_allclose(new["batch_stats"]["var"], 0.9 * 2.0 + 0.1 * flat.var(0, ddof=1),
                               rtol=1e-5)
    np.testing.assert_allclose(y.reshape(-1, 5), (flat - flat.mean(0)) /
                               np.sqrt(flat.var(0) + 1e-5), rtol=1e-4, atol=1e-5)


def test_shared_embedding_matches_reference(fx):
    ref, _, _, variables, _ = fx
    shared = variables["params"]["shared"]["embedding"][ref["y"]]
    np.testing.assert_allclose(np.asarray(shared), ref["shared_y"], rtol=0, atol=1e-6)


def test_settings_read_from_the_state_dict(fx):
    """Without kwargs the converter infers every shape setting; eps values come from the user."""
    ref, kwargs, module, _, fixtures = fx
    path = os.path.join(fixtures, NAME + ".G_ema.pth")
    inferred, _ = conv.convert(path, BN_eps=kwargs["BN_eps"], SN_eps=kwargs["SN_eps"])
    assert inferred == module
    assert biggan_net.g_arch(16, 32, "16")["in_channels"] == [64, 64, 64]
    json_module, _ = conv.convert(path, kwargs_json=os.path.join(fixtures, NAME + ".json"))
    assert json_module == module


@pytest.mark.parametrize("bad, needle", [
    ({"G_ch": 32}, "G_ch=32"),
    ({"G_attn": "32"}, "G_attn='32'"),
    ({"n_classes": 1000}, "n_classes=1000"),
    ({"hier": False}, "hier=False"),
    ({"resolution": 64}, "resolution=64"),
    ({"dim_z": 120}, "dim_z=120"),
])
def test_wrong_kwargs_name_the_setting(fx, bad, needle):
    _, kwargs, _, _, fixtures = fx
    with pytest.raises(conv.ConversionError, match=needle) as info:
        conv.convert(os.path.join(fixtures, NAME + ".G_ema.pth"), **{**kwargs, **bad})
    assert "checkpoint" in str(info.value)


def test_wrong_tensor_shape_names_the_key(fx, tmp_path):
    _, kwargs, _, _, fixtures = fx
    sd = dict(torch_pickle.load(os.path.join(fixtures, NAME + ".G_ema.pth")))
    sd["blocks.1.1.theta.weight"] = np.zeros((4, 64, 1, 1), np.float32)
    path = tmp_path / "G_bad.pth"
    pickle_writer.save(path, sd)
    with pytest.raises(conv.ConversionError, match=r"blocks\.1\.1\.theta\.weight.*\(4, 64, 1, 1\)"):
        conv.convert(str(path), **kwargs)
    del sd["blocks.1.1.theta.weight"]
    pickle_writer.save(path, sd)
    with pytest.raises(conv.ConversionError, match="lacks"):
        conv.convert(str(path), **kwargs)


def _torch_state_dict(variables):
    """Flax variables -> an official-style state_dict: the converter's name map, inverted."""
    sd = {}
    for coll, tree in variables.items():
        for path, value in flax.traverse_util.flatten_dict(tree).items():
            head, *mods, leaf = path
            m = re.fullmatch(r"(blocks|output_layer)_(.*)", head)
            prefix = ".".join([m[1] + "." + m[2].replace("_", ".") if m else head] + mods)
            value = np.asarray(value)
            if leaf == "kernel":
                sd[prefix + ".weight"] = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
            elif leaf == "embedding":
                sd[prefix + ".weight"] = value
            elif leaf == "u":
                for i, row in enumerate(value):
                    sd[f"{prefix}.u{i}"] = row[None]
                    sd[f"{prefix}.sv{i}"] = np.ones(1, np.float32)
            else:
                torch_leaf = {"mean": "stored_mean", "var": "stored_var"}.get(leaf, leaf)
                sd[f"{prefix}.{torch_leaf}"] = value
    return sd


def test_unshared_two_sv_checkpoint_round_trips(tmp_path):
    """G_shared off (per-class BN embeddings), no hier, 2 SVs: settings inferred, same output.

    Only the first singular value divides the weights, so dropping u1 must not change images.
    """
    kw = dict(resolution=32, n_classes=3, G_ch=4, dim_z=8, G_shared=False, G_attn="16",
              num_G_SVs=2)
    module = biggan_net.BigGAN(**kw)
    z = np.random.default_rng(1).normal(size=(2, 8)).astype(np.float32)
    y = np.array([2, 0], np.int32)
    # Random values in init's shapes: Flax's own init would compile ~200 small programs.
    shapes = jax.eval_shape(module.init, jax.random.key(0), z, y)
    rng = np.random.default_rng(2)
    variables = {c: jax.tree_util.tree_map_with_path(
        lambda p, a: (rng.uniform(0.5, 2.0, a.shape) if p[-1].key == "var"
                      else 0.3 * rng.normal(size=a.shape)).astype(np.float32), t)
        for c, t in shapes.items()}
    sd = _torch_state_dict(variables)
    assert "blocks.0.0.bn1.gain.weight" in sd and "shared.weight" not in sd
    pickle_writer.save(tmp_path / "G.pth", sd)
    got_module, got = conv.convert(str(tmp_path / "G.pth"), SN_eps=1e-12)
    assert got_module == module
    run = jax.jit(lambda m, v: m.apply(v, z, y), static_argnums=0)
    want = run(module, variables)
    np.testing.assert_allclose(np.asarray(run(got_module, got)), np.asarray(want), atol=1e-6)
    one_sv = {k: v for k, v in sd.items() if not re.search(r"\.(u|sv)1$", k)}
    m1, v1 = conv.convert_state_dict(one_sv)
    assert m1.num_G_SVs == 1
    np.testing.assert_allclose(np.asarray(run(m1, v1)), np.asarray(want), atol=1e-6)


def test_malicious_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "G_ema.pth"
    evil = {"linear.weight": Reduce(Global("os", "system"), (f"touch {marker}",))}
    pickle_writer.save(path, evil)
    with pytest.raises(torch_pickle.UnsafePickleError, match="os.system"):
        conv.convert(str(path), resolution=32)
    assert not marker.exists()


def test_cli_round_trip_and_generic_interface(fx, tmp_path):
    ref, _, module, variables, fixtures = fx
    out = tmp_path / "converted"
    status = conv.main([os.path.join(fixtures, NAME + ".G_ema.pth"), str(out),
                        f"--kwargs_json={os.path.join(fixtures, NAME + '.json')}"])
    assert status == 0
    meta = json.load(open(out / "meta.json"))
    assert meta["kind"] == "biggan" and meta["module_kwargs"]["G_ch"] == 16
    module2, variables2 = conv.load_converted(str(out))
    assert module2 == module
    jax.tree.map(np.testing.assert_array_equal, variables2, variables)

    gen = biggan.load(str(out))
    assert (gen.latent_shape, gen.num_classes, gen.resolution) == ((32,), 10, 32)
    img = jax.jit(gen.sample)(gen.params, ref["z"], ref["y"].astype(np.int32))
    np.testing.assert_allclose(np.asarray(img), nhwc(ref["img"]), rtol=0, atol=1e-4)
    assert float(jnp.max(jnp.abs(img))) <= 1.0


def test_cli_bad_input_fails_with_one_line(tmp_path):
    bad = tmp_path / "not_a_checkpoint.pth"
    bad.write_bytes(b"PK\x03\x04 truncated")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "converters.biggan", str(bad), str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
