"""EDM: snapshot conversion, the Flax SongUNet, and the differentiable Heun sampler."""
import functools
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from converters import edm as edm_converter
from converters import torch_pickle
from mgr_jax.generators import edm
from mgr_jax.models import edm as edm_net

NAME = "edm_songunet_cond10_res16"


def nhwc(a):
    """NCHW fixture array -> NHWC."""
    return np.transpose(a, (0, 2, 3, 1))


# conftest's fixtures_dir is function-scoped, so the expensive results are cached by path
# instead of in module-scoped fixtures: each is computed once per test session.

@functools.lru_cache(maxsize=None)
def _load_ref(fixtures):
    return dict(np.load(os.path.join(fixtures, NAME + ".npz")))


@functools.lru_cache(maxsize=None)
def _convert(fixtures):
    return edm_converter.convert(os.path.join(fixtures, NAME + ".pkl"))


@functools.lru_cache(maxsize=None)
def _sample(fixtures):
    data = _load_ref(fixtures)
    module, variables = _convert(fixtures)

    def loss(latents):
        out = edm.heun_sample(module, variables, latents, data["class_labels"], num_steps=5)
        return jnp.sum(out ** 2), out

    (_, out), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(nhwc(data["latents"]))
    return np.asarray(out), np.asarray(grad)


@pytest.fixture
def ref(fixtures_dir):
    """(the fixture's inputs and reference outputs, fixtures directory)."""
    return _load_ref(fixtures_dir), fixtures_dir


@pytest.fixture
def converted(fixtures_dir):
    """(module, variables) converted from the fixture snapshot."""
    return _convert(fixtures_dir)


@pytest.fixture
def sampled(fixtures_dir):
    """5-step sampler output and d sum(out^2) / d latents, from one compiled program."""
    return _sample(fixtures_dir)


def test_hyper_parameters_from_snapshot(converted, ref):
    module, variables = converted
    assert (module.img_resolution, module.img_channels, module.label_dim) == (16, 3, 10)
    assert module.channel_mult == (1, 2) and module.attn_resolutions == (8,)
    assert module.sigma_data == 0.5
    n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables))
    assert n == 189523  # num_parameters in the fixture's .json


def test_denoised_matches_reference(converted, ref):
    data, _ = ref
    module, variables = converted
    got = jax.jit(module.apply)(variables, nhwc(data["x"]), data["sigma"], data["class_labels"])
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), nhwc(data["denoised"]), rtol=0, atol=1e-4)


def test_time_steps_match_reference(ref):
    data, _ = ref
    t = edm.edm_time_steps(5, 0.002, 80.0, 7.0)
    np.testing.assert_allclose(t.astype(np.float32), data["t_steps"], rtol=1e-6, atol=0)
    assert t[-1] == 0.0 and len(t) == 6
    with pytest.raises(ValueError, match="num_steps"):
        edm.edm_time_steps(1)


def test_heun_sample_matches_reference(sampled, ref):
    data, _ = ref
    out, _ = sampled
    np.testing.assert_allclose(out, nhwc(data["sampler_out"]), rtol=0, atol=1e-3)


def test_sampler_gradient_matches_reference(sampled, ref):
    data, _ = ref
    _, grad = sampled
    np.testing.assert_allclose(grad, nhwc(data["grad_latents"]), rtol=0, atol=2e-3)


def _evil_pickle(path, func, arg):
    """A pickle whose loading would call func(arg): the classic REDUCE exploit."""
    class Evil:
        def __reduce__(self):
            return func, (arg,)
    with open(path, "wb") as f:
        pickle.dump({"ema": Evil()}, f, protocol=4)


@pytest.mark.parametrize("how", ["os.system", "builtins.eval"])
def test_malicious_pickle_is_refused(tmp_path, how):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "evil.pkl")
    if how == "os.system":
        _evil_pickle(path, os.system, f"touch {marker}")
    else:
        _evil_pickle(path, eval, f"open({str(marker)!r}, 'w').close()")
    with pytest.raises(torch_pickle.UnsafePickleError, match="system|eval"):
        edm_converter.convert(path)
    assert not marker.exists()


def test_command_line_errors_are_one_line(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "evil.pkl")
    _evil_pickle(path, os.system, f"touch {marker}")
    assert edm_converter.main([path, str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "system" in err
    assert edm_converter.main([str(tmp_path / "missing.pkl"), str(tmp_path / "out")]) != 0
    not_snapshot = tmp_path / "list.pkl"
    not_snapshot.write_bytes(pickle.dumps([1, 2, 3]))
    assert edm_converter.main([str(not_snapshot), str(tmp_path / "out")]) != 0
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_command_line_round_trip_and_generator(ref, converted, tmp_path, capsys):
    data, fixtures = ref
    module, variables = converted
    out_dir = str(tmp_path / "edm")
    assert edm_converter.main([os.path.join(fixtures, NAME + ".pkl"), out_dir]) == 0
    module2, variables2 = edm_converter.load_converted(out_dir)
    assert module2 == module
    jax.tree.map(np.testing.assert_array_equal, variables2, variables)

    gen = edm.load(out_dir, num_steps=2)
    assert gen.latent_shape == (16, 16, 3) and gen.num_classes == 10 and gen.resolution == 16
    z = nhwc(data["latents"])[:2]

    @jax.jit
    def both(params, z, labels, onehot):
        # One program: XLA shares the identical sampler computations, so this compiles once.
        want = edm.heun_sample(module, params, z, onehot, num_steps=2)
        return gen.sample(params, z, labels), want

    imgs, want = both(gen.params, z, data["labels"][:2], data["class_labels"][:2])
    assert imgs.shape == (2, 16, 16, 3)
    assert float(jnp.max(jnp.abs(imgs))) <= 1.0 and float(jnp.max(jnp.abs(want))) > 1.0
    np.testing.assert_allclose(np.asarray(imgs), np.clip(np.asarray(want), -1, 1), atol=1e-5)


VARIANTS = {
    # DDPM++ without labels, with the skip encoder and an augmentation-label input (left unused
    # when sampling); checked through the whole sampler, class_labels None.
    "ddpmpp_uncond_skip_encoder": dict(label_dim=0, encoder_type="skip", augment_dim=9),
    # NCSN++: Fourier features, 2x noise channels, residual encoder, skip decoder, [1,3,3,1].
    "ncsnpp_cond": dict(label_dim=3, embedding_type="fourier", channel_mult_noise=2,
                        encoder_type="residual", decoder_type="skip",
                        resample_filter=[1, 3, 3, 1]),
}


def _random_variables(module, x, labels, seed=0):
    """Random variables in `module`'s layout (eval_shape, then numpy draws).

    Shapes come from tracing `module.init` abstractly; drawing the values with numpy avoids
    compiling the initialisers, which costs more than the network itself on a small CPU.
    Fan-in-scaled kernels, small non-zero biases, GroupNorm scales near 1, as the fixture.
    """
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x, jnp.ones((x.shape[0],)),
                            labels)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = getattr(path[-1], "key", "")
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
        if name == "scale":
            return (1 + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)
        if name == "freqs":
            return (16 * rng.normal(size=leaf.shape)).astype(np.float32)
        return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_build_and_differentiate(variant):
    kwargs = dict(img_resolution=8, img_channels=3, model_channels=8, channel_mult=[1, 2],
                  num_blocks=1, attn_resolutions=[4], dropout=0.0, **VARIANTS[variant])
    module = edm_net.build(**kwargs)
    labels = jax.nn.one_hot(jnp.arange(2) % 3, 3) if kwargs["label_dim"] else None
    latents = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
    variables = _random_variables(module, latents, labels)
    params = variables["params"]["model"]
    if variant == "ncsnpp_cond":
        assert variables["buffers"]["model"]["map_noise"]["freqs"].shape == (8,)
        assert "enc_4x4_aux_residual" in params
        assert "dec_4x4_aux_conv" in params  # the skip decoder has an output at every level
    else:
        assert "enc_4x4_aux_skip" in params and "map_augment" in params
        out = jax.jit(lambda z: edm.heun_sample(module, variables, z, None, num_steps=2))(latents)
        assert out.shape == latents.shape and bool(jnp.all(jnp.isfinite(out)))

    def loss(z):  # one network evaluation: gradients through the sampler are checked above
        return jnp.sum(module.apply(variables, z, jnp.array([0.3, 5.0]), labels) ** 2)

    value, grad = jax.jit(jax.value_and_grad(loss))(latents)
    assert grad.shape == latents.shape
    assert np.isfinite(float(value)) and bool(jnp.all(jnp.isfinite(grad)))
    assert float(jnp.max(jnp.abs(grad))) > 0


def test_resampling_matches_transposed_convolution():
    """Up/down-sampling equal a direct loop over PyTorch's conv_transpose2d/conv2d definition."""
    x = np.random.default_rng(0).normal(size=(1, 6, 6, 2)).astype(np.float32)
    for taps in [(1, 1), (1, 3, 3, 1)]:
        f = edm_net.resample_buffer(taps)
        k, pad = f.shape[0], (f.shape[0] - 1) // 2
        full = np.zeros((1, 5 * 2 + k, 5 * 2 + k, 2), np.float32)
        for i in range(6):
            for j in range(6):
                full[0, 2 * i:2 * i + k, 2 * j:2 * j + k] += x[0, i, j] * 4 * f[:, :, None]
        want = full[:, pad:full.shape[1] - pad, pad:full.shape[2] - pad]
        np.testing.assert_allclose(edm_net._upsample(x, taps, pad), want, atol=1e-6)
        padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        want = np.stack([[np.einsum("hwc,hw->c", padded[0, 2 * i:2 * i + k, 2 * j:2 * j + k], f)
                          for j in range(3)] for i in range(3)])[None]
        np.testing.assert_allclose(edm_net._downsample(x, taps, pad), want, atol=1e-6)
