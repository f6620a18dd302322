"""FastGAN: all_<iter>.pth conversion (EMA and raw) against the official code, order, errors.

Tolerance atol 1e-4 with rtol 1e-4, as fixtures/README.md states: outputs are unbounded (|x| up
to 9.4) and the reference in float64 differs from float32 by < 2e-5.
"""
import atexit
import functools
import json
import lzma
import os
import shutil
import tempfile

import jax
import numpy as np
import pytest

from converters import fastgan as conv
from converters import pickle_writer, torch_pickle
from converters.pickle_writer import Global, Reduce
from mgr_jax.generators import fastgan
from mgr_jax.models import fastgan as fastgan_net

NAME = "fastgan_res256_ngf8"


def nhwc(a):
    """NCHW fixture array -> NHWC."""
    return np.transpose(a, (0, 2, 3, 1))


# conftest's fixtures_dir is function-scoped: cache the expensive parts by path instead.

@functools.lru_cache(maxsize=None)
def _fixture(fixtures):
    """Decompress the .pth once, convert EMA and raw, run both through one compiled program."""
    ref = dict(np.load(os.path.join(fixtures, NAME + ".npz")))
    meta = json.load(open(os.path.join(fixtures, NAME + ".json")))
    tmp = tempfile.mkdtemp(prefix="fastgan_test_")
    atexit.register(shutil.rmtree, tmp, True)
    path = os.path.join(tmp, "all_1.pth")
    with lzma.open(os.path.join(fixtures, NAME + ".pth.xz")) as f, open(path, "wb") as g:
        shutil.copyfileobj(f, g)
    module, ema = conv.convert(path)
    raw_module, raw = conv.convert(path, use_ema=False)
    assert raw_module == module
    noise = {k[len("noise_"):]: nhwc(v) for k, v in ref.items() if k.startswith("noise_")}
    run = jax.jit(lambda v, z, n: module.apply(v, z, noise=n))
    outputs = {"ema": run(ema, ref["z"], noise), "raw": run(raw, ref["z"], noise)}
    return ref, meta, path, module, ema, outputs


@pytest.fixture
def fx(fixtures_dir):
    """(reference arrays, .json meta, decompressed .pth path, module, EMA variables, outputs)."""
    return _fixture(fixtures_dir)


def test_architecture_read_from_checkpoint(fx):
    _, meta, _, module, _, _ = fx
    assert module.clone(precision=None) == fastgan_net.FastGAN(**meta["G_kwargs"], precision=None)


def test_registration_order_matches_official(fx):
    """The order is derived from our module layout; the .json is the official ground truth."""
    _, meta, _, _, _, _ = fx
    assert fastgan_net.parameter_names(256) == meta["g_ema_param_names"]
    assert fastgan_net.noise_paths(256) == [v["npz_key"][len("noise_"):]
                                        for v in meta["noise"]["layers"].values()]


def test_ema_images_match_reference(fx):
    ref, _, _, _, _, out = fx
    img, img_128 = out["ema"]
    assert img.shape == (2, 256, 256, 3) and img_128.shape == (2, 128, 128, 3)
    np.testing.assert_allclose(np.asarray(img), nhwc(ref["img"]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(img_128), nhwc(ref["img_128"]), rtol=1e-4, atol=1e-4)


def test_raw_generator_matches_reference(fx):
    ref, _, _, _, _, out = fx
    np.testing.assert_allclose(np.asarray(out["raw"][1]), nhwc(ref["img_raw_128"]),
                               rtol=1e-4, atol=1e-4)
    # EMA and raw differ by up to 3.9 here, so reading the wrong weights cannot pass.
    assert np.max(np.abs(nhwc(ref["img_raw_128"]) - nhwc(ref["img_128"]))) > 0.1


def test_ema_list_must_fit(fx):
    _, _, path, _, _, _ = fx
    ck = torch_pickle.load(path)
    g = {k[len("module."):]: v for k, v in ck["g"].items()}
    with pytest.raises(conv.ConversionError, match="list of 44"):
        conv.apply_ema(g, ck["g_ema"][:-1], 256)
    swapped = list(ck["g_ema"])
    swapped[0], swapped[3] = swapped[3], swapped[0]
    with pytest.raises(conv.ConversionError, match=r"g_ema\[0\].*init\.init\.0\.weight_orig"):
        conv.apply_ema(g, swapped, 256)


def test_not_a_fastgan_checkpoint(fixtures_dir):
    with pytest.raises(conv.ConversionError, match="not a FastGAN"):
        conv.convert(os.path.join(fixtures_dir, "biggan_cond10_res32.G_ema.pth"))


def test_malicious_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "all_1.pth"
    evil = {"g": {"module.init.init.0.weight_orig":
                  Reduce(Global("os", "system"), (f"touch {marker}",))}, "g_ema": []}
    pickle_writer.save(path, evil)
    with pytest.raises(torch_pickle.UnsafePickleError, match="os.system"):
        conv.convert(str(path))
    assert not marker.exists()
    assert conv.main([str(path), str(tmp_path / "out")]) == 2  # issue 18: every converter CLI exits 2 on bad input
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_noise_injection_modes():
    """Given noise is used as is; 'random' draws from the key; 'none' adds nothing."""
    feat = np.ones((2, 4, 4, 3), np.float32)
    layer = fastgan_net.NoiseInjection()
    v = {"params": {"weight": np.array([0.5], np.float32)}}
    given = np.arange(32, dtype=np.float32).reshape(2, 4, 4, 1)
    np.testing.assert_allclose(layer.apply(v, feat, given), feat + 0.5 * given)
    np.testing.assert_allclose(layer.apply(v, feat, None, "none"), feat)
    big = np.ones((2, 64, 64, 3), np.float32)
    draw = lambda k: np.asarray(layer.apply(v, big, None, "random", rngs={"noise": k}))  # noqa
    a, b, c = draw(jax.random.key(3)), draw(jax.random.key(3)), draw(jax.random.key(4))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    noise = (a - big) / 0.5  # one map per sample, shared by the channels, standard normal
    np.testing.assert_allclose(noise, np.broadcast_to(noise[..., :1], noise.shape), atol=1e-6)
    assert abs(noise.std() - 1.0) < 0.05 and abs(noise.mean()) < 0.05


def test_cli_round_trip_and_generic_interface(fx, tmp_path):
    ref, _, path, module, ema, _ = fx
    out = tmp_path / "converted"
    assert conv.main([path, str(out)]) == 0
    module2, variables2 = conv.load_converted(str(out))
    assert module2 == module
    jax.tree.map(np.testing.assert_array_equal, variables2, ema)

    gen = fastgan.load(str(out), noise_mode="random")
    assert (gen.latent_shape, gen.num_classes, gen.resolution) == ((64,), 0, 256)
    assert not gen.conditional
    sample = jax.jit(gen.sample)
    labels = np.zeros(2, np.int32)
    a = sample(gen.params, ref["z"], labels, jax.random.key(0))
    b = sample(gen.params, ref["z"], labels, jax.random.key(0))
    c = sample(gen.params, ref["z"], labels, jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.shape == (2, 256, 256, 3) and float(np.max(np.abs(a))) <= 1.0
    # Unclipped outputs reach 9.4: clipping is visible, and fresh noise changes the image.
    assert float(np.max(np.abs(a))) == 1.0 and not np.allclose(a, c)
    with pytest.raises(ValueError, match="rng=key"):
        gen.sample(gen.params, ref["z"], labels)
