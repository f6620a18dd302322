"""GAN training: the discriminator, the losses and regularisers, EMA, DiffAugment, the run loop.

Tiny shapes throughout (8x8 images, channels <= 16) so the jitted steps compile quickly; the
run-loop tests share one tiny config, so its programs compile once per session
(`gan_train.build` caches them on the config) and its metric classifier is trained once.
"""
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from configs.generator import digits as digits_config
from mgr_jax import frechet
from mgr_jax.errors import UserError
from mgr_jax.gan import (
    diffaugment as gan_augment,
    metrics as gan_metrics,
    steps as gan_train,
    train as train_generator,
)
from mgr_jax.generators import stylegan2_ada as sg_generator
from mgr_jax.models import stylegan2
from mgr_jax.models.stylegan2 import discriminator as stylegan2_disc
from mgr_jax.run import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_gan_config(**overrides):
    """The digits generator config shrunk: 8x8, channels <= 16, batch 8, 8 iterations, a
    ResNet-10 metric classifier trained for one epoch."""
    c = digits_config.get_config()
    c.total_kimg = 0.064  # 8 iterations of 8
    c.batch_size = 8
    c.data.image_size = 8
    c.data.subset_fraction = 0.3
    c.generator.resolution = 8
    c.generator.z_dim = c.generator.w_dim = 8
    c.generator.mapping_layers = 1
    c.generator.channel_base, c.generator.channel_max = 64, 16
    c.discriminator.channel_base, c.discriminator.channel_max = 64, 16
    c.discriminator.mapping_layers = 1
    c.loss.r1_interval = 4  # both step variants within a short run
    c.log_every_kimg = 0.016
    c.snapshot_every_kimg = 0.032
    c.metric.classifier_num_epochs = 1
    c.metric.classifier.model.arch = "resnet10"
    c.metric.classifier.augment.num_ops = 1
    c.metric.classifier_width = 0.125
    c.metric.num_samples = 40
    c.samples.cols = 3
    c.samples.zoom = 1
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c


# ----------------------------------------------------------------------------- discriminator

@pytest.mark.parametrize("resolution", [4, 8, 16, 32])
@pytest.mark.parametrize("c_dim", [0, 10])
@pytest.mark.parametrize("architecture", ["resnet", "skip", "orig"])
def test_discriminator_output_shape(resolution, c_dim, architecture):
    D = stylegan2_disc.Discriminator(c_dim=c_dim, img_resolution=resolution,
                                     architecture=architecture, channel_base=64,
                                     channel_max=16, mapping_layers=1)
    params = gan_train.discriminator_variables(D, seed=0)
    img = jax.random.normal(jax.random.key(0), (4, resolution, resolution, 3))
    c = jax.nn.one_hot(jnp.arange(4), c_dim) if c_dim else None
    out = D.apply({"params": params}, img, c)
    assert out.shape == (4, 1) and bool(jnp.all(jnp.isfinite(out)))
    assert ("mapping" in params) == (c_dim > 0)
    top = f"b{resolution}" if resolution > 4 else "b4"
    assert "fromrgb" in params[top]


def test_discriminator_projection_is_the_official_formula():
    """Score = sum(out * cmap) / sqrt(cmap_dim): with cmap_dim 16, rebuilt from the pieces."""
    D = stylegan2_disc.Discriminator(c_dim=3, img_resolution=8, channel_base=64,
                                     channel_max=16, mapping_layers=2)
    params = gan_train.discriminator_variables(D, seed=1)
    img = jax.random.normal(jax.random.key(2), (4, 8, 8, 3))
    c = jax.nn.one_hot(jnp.array([0, 1, 2, 0]), 3)
    score = D.apply({"params": params}, img, c)
    _, inter = D.apply({"params": params}, img, c, capture_intermediates=True)
    cmap = inter["intermediates"]["mapping"]["__call__"][0]
    out = inter["intermediates"]["b4"]["out"]["__call__"][0]
    want = jnp.sum(out * cmap, axis=1, keepdims=True) / math.sqrt(16)
    np.testing.assert_allclose(score, want, rtol=1e-5, atol=1e-6)


def _mbstd_numpy(x_nchw, group_size, num_channels):
    """The official MinibatchStdLayer in NCHW numpy, line by line."""
    n, c, h, w = x_nchw.shape
    g = min(group_size, n)
    f = num_channels
    y = x_nchw.reshape(g, -1, f, c // f, h, w).astype(np.float64)
    y = y - y.mean(axis=0)
    y = np.sqrt(np.square(y).mean(axis=0) + 1e-8)
    y = y.mean(axis=(2, 3, 4)).reshape(-1, f, 1, 1)
    y = np.tile(y, (g, 1, h, w))
    return np.concatenate([x_nchw, y], axis=1)


@pytest.mark.parametrize("n,group,channels", [(8, 4, 1), (8, 4, 2), (6, 2, 3), (4, 8, 1)])
def test_minibatch_stddev_matches_numpy(n, group, channels):
    x = np.random.default_rng(0).standard_normal((n, 5, 3, 6)).astype(np.float32)  # NHWC
    got = stylegan2_disc.minibatch_stddev(jnp.asarray(x), group, channels)
    want = _mbstd_numpy(x.transpose(0, 3, 1, 2), group, channels).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_minibatch_stddev_refuses_an_indivisible_batch():
    with pytest.raises(ValueError, match="divisible"):
        stylegan2_disc.minibatch_stddev(jnp.zeros((6, 4, 4, 2)), 4, 1)


# ----------------------------------------------------------------------------- fast ops

def _upfirdn2d_by_conv(x, f, up=1, down=1, padding=(0, 0, 0, 0), gain=1.0, flip_filter=False):
    """upfirdn2d as zero insertion + one depthwise convolution (the direct definition)."""
    px0, px1, py0, py1 = padding
    cfg = [(0, 0, 0), (py0, py1 + up - 1, up - 1), (px0, px1 + up - 1, up - 1), (0, 0, 0)]
    x = jax.lax.pad(x, jnp.zeros((), x.dtype), cfg)
    f = np.asarray(f, np.float32) * gain
    x = stylegan2.fir_depthwise(x, f if flip_filter else f[::-1, ::-1])
    return x[:, ::down, ::down, :]


@pytest.mark.parametrize("kwargs", [dict(up=2, padding=(2, 1, 2, 1), gain=4),
                                    dict(down=2, padding=(1, 1, 1, 1)),
                                    dict(padding=(2, 2, 2, 2)),
                                    dict(up=2, padding=(-1, 0, 1, -1), gain=4, flip_filter=True)])
def test_separable_upfirdn2d_equals_the_depthwise_convolution(kwargs):
    f = stylegan2.setup_filter((1, 2, 5, 1))  # asymmetric: catches a flip error
    assert stylegan2.separable_taps(f) is not None
    x = jax.random.normal(jax.random.key(0), (2, 6, 5, 3))
    np.testing.assert_allclose(stylegan2.upfirdn2d(x, f, **kwargs),
                               _upfirdn2d_by_conv(x, f, **kwargs), atol=1e-5)


def test_upfirdn2d_of_a_non_separable_filter():
    f = np.array([[0.0, 1.0, 0.0], [1.0, 4.0, 2.0], [0.0, 1.0, 0.0]], np.float32)
    assert stylegan2.separable_taps(f) is None
    x = jax.random.normal(jax.random.key(0), (1, 6, 5, 2))
    got = stylegan2.upfirdn2d(x, f, padding=(1, 1, 1, 1))
    # Direct: out[i, j] = sum_ab f[a, b] x_pad[i + 2 - a, j + 2 - b] (a true convolution).
    xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = sum(f[a, b] * xp[:, 2 - a:2 - a + 6, 2 - b:2 - b + 5]
               for a in range(3) for b in range(3))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_fast_ops_leave_the_generator_unchanged():
    G = stylegan2.Generator(z_dim=8, c_dim=3, w_dim=8, img_resolution=8, mapping_layers=1,
                            channel_base=128, channel_max=16, architecture="resnet")
    v = stylegan2.random_variables(G, 0)
    z = jax.random.normal(jax.random.key(1), (2, 8))
    c = jax.nn.one_hot(jnp.array([0, 2]), 3)
    fast = G.clone(upsample_impl="fir_first")
    assert jax.tree.structure(jax.eval_shape(fast.init, jax.random.key(0), z, c)) == \
        jax.tree.structure(v)

    def images_and_grad(m):  # the images and the gradient G's trainer takes (synthesis weights)
        def loss(p):
            images = m.apply({**v, "params": p}, z, c)
            return jnp.sum(images ** 2), images
        (_, images), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(v["params"])
        return images, grad
    (want, g_want), (got, g_got) = images_and_grad(G), images_and_grad(fast)
    np.testing.assert_allclose(got, want, atol=1e-4 * float(jnp.max(jnp.abs(want))))
    for a, b in zip(jax.tree.leaves(g_want), jax.tree.leaves(g_got)):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(a))))


# ----------------------------------------------------------------------------- losses, EMA

def test_r1_penalty_of_a_linear_discriminator_is_the_squared_weight_norm():
    w = jax.random.normal(jax.random.key(0), (4, 4, 3))
    x = jax.random.normal(jax.random.key(1), (5, 4, 4, 3))
    got = gan_train.r1_penalty(lambda x: jnp.sum(x * w, axis=(1, 2, 3)), x)
    np.testing.assert_allclose(got, np.full(5, float(jnp.sum(w ** 2))), rtol=1e-5)
    # quadratic D: score = sum(a x^2), grad = 2 a x per sample.
    a = jax.random.uniform(jax.random.key(2), (4, 4, 3))
    got = gan_train.r1_penalty(lambda x: jnp.sum(a * x ** 2, axis=(1, 2, 3))[:, None], x)
    want = np.sum((2 * np.asarray(a) * np.asarray(x)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_ema_beta_and_update_arithmetic():
    # ramp-up: half-life min(ema_kimg * 1000, nimg * rampup) images.
    assert float(gan_train.ema_beta(0.0, 32, 10.0, 0.05)) == 0.0
    np.testing.assert_allclose(gan_train.ema_beta(6400.0, 32, 10.0, 0.05), 0.5 ** (32 / 320))
    np.testing.assert_allclose(gan_train.ema_beta(1e7, 32, 10.0, 0.05), 0.5 ** (32 / 10000))
    np.testing.assert_allclose(gan_train.ema_beta(0.0, 32, 10.0, 0.0), 0.5 ** (32 / 10000))
    ema = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(4.0)}
    new = {"a": jnp.array([3.0, 0.0]), "b": jnp.array(0.0)}
    out = gan_train.ema_update(ema, new, 0.75)  # new + 0.75 (ema - new)
    np.testing.assert_allclose(out["a"], [1.5, 1.5])
    np.testing.assert_allclose(out["b"], 3.0)


def test_lazy_adam_correction_is_the_official_one():
    """k = 16: lr * 16/17, betas ** (16/17); one Adam step of torch's form, by hand."""
    tx = gan_train.lazy_adam(0.0025, (0.5, 0.99), 1e-8, reg_interval=16)
    r = 16 / 17
    lr, b1, b2 = 0.0025 * r, 0.5 ** r, 0.99 ** r
    p, g = jnp.array([1.0, -1.0]), jnp.array([0.3, -2.0])
    upd, _ = tx.update(g, tx.init(p), p)
    m, v = (1 - b1) * g / (1 - b1), (1 - b2) * g ** 2 / (1 - b2)
    np.testing.assert_allclose(upd, -lr * m / (jnp.sqrt(v) + 1e-8), rtol=1e-5)


def test_frechet_distance_of_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    got = frechet.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    want = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert abs(frechet.frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1))) < 1e-9


# ----------------------------------------------------------------------------- DiffAugment

@pytest.mark.parametrize("op", ["brightness", "saturation", "contrast", "translation",
                                "cutout", "all"])
def test_diff_augment_keeps_the_shape_and_is_differentiable(op):
    fn = {"brightness": gan_augment.rand_brightness,
          "saturation": gan_augment.rand_saturation,
          "contrast": gan_augment.rand_contrast,
          "translation": gan_augment.rand_translation,
          "cutout": gan_augment.rand_cutout,
          "all": gan_augment.diff_augment}[op]
    key = jax.random.key(3)
    x = jax.random.normal(jax.random.key(4), (3, 8, 8, 3))
    y = fn(key, x)
    assert y.shape == x.shape and y.dtype == x.dtype
    # The random parameters are fixed by the key: the op is piecewise linear in x, so the
    # analytic gradient must match finite differences (float32, eps 1e-3: atol 1e-2).
    check_grads(lambda x: fn(key, x), (x,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_translation_shifts_with_zero_fill():
    x = jnp.arange(2 * 5 * 4, dtype=jnp.float32).reshape(2, 5, 4, 1) + 1.0
    shift = jnp.array([2, -1])
    got = np.asarray(gan_augment._shift_axis(x, shift, axis=1))
    xn = np.asarray(x)
    want = np.zeros_like(xn)
    want[0, :3] = xn[0, 2:]  # out[i] = x[i + 2]
    want[1, 1:] = xn[1, :4]  # out[i] = x[i - 1]
    np.testing.assert_array_equal(got, want)


def test_cutout_zeroes_at_most_one_square():
    x = jnp.ones((64, 8, 8, 1))
    y = np.asarray(gan_augment.rand_cutout(jax.random.key(0), x, ratio=0.5))
    zeros = (y == 0).sum(axis=(1, 2, 3))
    assert zeros.max() == 16 and zeros.min() >= 4  # a 4x4 square, clipped at most to 2x2
    assert not np.all(zeros == 16)  # centres near the border clip


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="zoom"):
        gan_augment.parse_policy("color,zoom")


# ----------------------------------------------------------------------------- train step

@pytest.fixture(scope="module")
def tiny_step_setup():
    config = tiny_gan_config(**{"augment.policy": ""})
    G, D, g_tx, d_tx, steps = gan_train.build(config, 10)
    return config, G, D, g_tx, d_tx, steps


def _fixed_d_loss(D, d_params, real, real_c, fake, fake_c):
    apply = jax.jit(D.apply)  # eagerly every operation compiles alone
    fake_logits = apply({"params": d_params}, fake, fake_c)
    real_logits = apply({"params": d_params}, real, real_c)
    return float(jnp.mean(jax.nn.softplus(fake_logits)) +
                 jnp.mean(jax.nn.softplus(-real_logits)))


def test_training_steps_lower_the_discriminator_loss_on_a_fixed_batch(tiny_step_setup):
    config, G, D, g_tx, d_tx, steps = tiny_step_setup
    state = gan_train.create_state(config, G, D, g_tx, d_tx)
    real = jax.random.uniform(jax.random.key(0), (8, 8, 8, 3), minval=-1.0, maxval=1.0)
    real = jnp.where(jnp.arange(8)[None, :, None, None] < 4, real, -1.0)  # a fixed pattern
    labels = jnp.arange(8) % 10
    real_c = jax.nn.one_hot(labels, 10)
    z = jax.random.normal(jax.random.key(1), (8, 8))
    fake = jax.jit(G.apply)(state.g_vars, z, real_c)
    before = _fixed_d_loss(D, state.d_params, real, real_c, fake, real_c)
    rng = jax.random.key(5)
    batch = {"image": real, "label": labels}
    for step in range(4):
        state, metrics = steps[gan_train.step_kind(step, config)](state, batch, rng)
    after = _fixed_d_loss(D, state.d_params, real, real_c, fake, real_c)
    assert after < before - 0.05, (before, after)
    assert int(state.step) == 4
    assert all(math.isfinite(float(v)) for v in metrics.values())
    # EMA moved towards G but is not G (beta > 0 after the first iteration).
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                        state.ema["params"], state.g_vars["params"])
    assert max(jax.tree.leaves(diff)) > 0
    # The w_avg buffer tracks the mapping output (official beta 0.995): it has moved off 0.
    assert float(jnp.max(jnp.abs(state.g_vars["buffers"]["mapping"]["w_avg"]))) > 0


def test_r1_step_adds_the_scaled_penalty(tiny_step_setup):
    """The reg step's metric is the mean ||grad||^2 a direct computation gives."""
    config, G, D, g_tx, d_tx, steps = tiny_step_setup
    state = gan_train.create_state(config, G, D, g_tx, d_tx)
    real = jax.random.uniform(jax.random.key(0), (8, 8, 8, 3), minval=-1.0, maxval=1.0)
    labels = jnp.arange(8) % 10
    rng = jax.random.key(6)
    new, metrics = steps[(True, False)](state, {"image": real, "label": labels}, rng)
    assert "r1_penalty" in metrics and float(metrics["r1_penalty"]) > 0
    _, metrics_no_r1 = steps[(False, False)](new, {"image": real, "label": labels}, rng)
    assert "r1_penalty" not in metrics_no_r1


@pytest.mark.slow
def test_path_length_step_runs_and_tracks_its_mean():
    config = tiny_gan_config(**{"loss.pl_weight": 2.0, "augment.policy": ""})
    G, D, g_tx, d_tx, steps = gan_train.build(config, 10)
    state = gan_train.create_state(config, G, D, g_tx, d_tx)
    batch = {"image": jnp.zeros((8, 8, 8, 3)), "label": jnp.arange(8) % 10}
    state, metrics = steps[(False, True)](state, batch, jax.random.key(0))
    assert math.isfinite(float(metrics["pl_penalty"])) and float(state.pl_mean) > 0


# ----------------------------------------------------------------------------- run loop

@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """The tiny metric classifier, trained once for the module."""
    directory = str(tmp_path_factory.mktemp("metric_classifier") / "cls")
    gan_metrics.ensure_classifier(gan_metrics.classifier_config(tiny_gan_config()), directory)
    return directory


def _restore(config, workdir):
    from mgr_jax.run import checkpoints  # noqa: PLC0415
    state = train_generator.setup(config).state
    ckpt = checkpoints.RunCheckpoints(workdir, keep_best=False)
    try:
        return ckpt.restore_latest(state)
    finally:
        ckpt.close()


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    for r in records:
        r.pop("it_per_s", None)  # timing
    return records


def test_resume_is_bit_exact_and_exports_a_loadable_generator(tmp_path, classifier_dir):
    # No DiffAugment (as tiny_step_setup): the loop's steps are the programs compiled there.
    config = tiny_gan_config(**{"metric.classifier_dir": classifier_dir, "augment.policy": ""})
    whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
    r1 = train_generator.train_generator(config, whole)
    assert train_generator.train_generator(config, parts, max_kimg_this_run=0.01) is None
    r2 = train_generator.train_generator(config, parts)
    (a, loop_a), (b, loop_b) = _restore(config, whole), _restore(config, parts)
    assert loop_a["step"] == loop_b["step"] == 8
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert _records(whole) == _records(parts)
    snaps = [r for r in _records(whole) if r["kind"] == "snapshot"]
    assert [s["step"] for s in snaps] == [0, 4, 8]
    assert all(0 <= s["label_accuracy"] <= 100 and s["frechet_distance"] >= 0 for s in snaps)
    assert r1["final"] == r2["final"] and r1["kimg"] == 0.064
    assert os.path.exists(os.path.join(whole, "samples_0000.032.png"))
    # The export is the EMA generator, loadable through the generic interface.
    gen = sg_generator.load(os.path.join(whole, "generator"))
    assert gen.num_classes == 10 and gen.resolution == 8 and gen.latent_shape == (8,)
    images = gen.sample(gen.params, jnp.zeros((2, 8)), jnp.array([1, 2]))
    assert images.shape == (2, 8, 8, 3)
    jax.tree.map(np.testing.assert_array_equal, gen.params, jax.device_get(a.ema))


def test_workdir_with_another_config_is_refused(tmp_path):
    """The classifier run's rule (run/workdir.py): a workdir whose run saved a snapshot is
    bound to its config.json, and a second run on a locked workdir is refused at once."""
    train_generator.checkpoints.write_config(
        str(tmp_path), json.loads(tiny_gan_config().to_json()))
    os.makedirs(tmp_path / "checkpoints" / "latest" / "8")  # a saved snapshot
    with pytest.raises(UserError, match="loss.r1_gamma"):
        train_generator.train_generator(tiny_gan_config(**{"loss.r1_gamma": 1.0}), str(tmp_path))
    with workdir_lib.RunLock(str(tmp_path), json.loads(tiny_gan_config().to_json()),
                             resumable=train_generator.RESUMABLE_CHANGES):
        with pytest.raises(UserError, match="in use|locked|another run"):
            train_generator.train_generator(tiny_gan_config(), str(tmp_path))


@pytest.mark.parametrize("override,match", [
    ({"batch_size": 6}, "mbstd_group_size"),
    ({"generator.resolution": 16}, "data.image_size"),
    ({"generator.resolution": 12, "data.image_size": 12}, "power of two"),
    ({"augment.policy": "color,flip"}, "augment.policy"),
    ({"loss.style_mixing_prob": 1.5}, "style_mixing_prob"),
    ({"discriminator.architecture": "dense"}, "discriminator.architecture"),
    ({"data.subset_fraction": 0.0}, "data.subset_fraction"),
    ({"total_kimg": 0.0}, "total_kimg"),
])
def test_bad_config_is_one_clear_error_and_writes_nothing(tmp_path, override, match):
    workdir = tmp_path / "run"
    with pytest.raises(UserError, match=match):
        train_generator.train_generator(tiny_gan_config(**override), str(workdir))
    assert not workdir.exists()


def test_cli_prints_one_line_and_exits_non_zero(tmp_path):
    cmd = [sys.executable, "-m", "mgr_jax.train_generator",
           "--config=configs/generator/digits.py", f"--workdir={tmp_path}/run",
           "--config.batch_size=30"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "batch_size=30" in lines[0]
    assert not os.path.exists(f"{tmp_path}/run")
