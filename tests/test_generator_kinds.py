"""The main job with every generator kind, loaded from its original checkpoint file.

For stylegan2_ada, biggan, fastgan and edm a small random-weight generator is written in its
original PyTorch format (tests/official_files.py) and `config.generator` points at that file.
Every kind must load as the file says and pass a derivative from its images to z; the main job
(`train.train_and_evaluate`, what `python -m mgr_jax.main` runs) trains MGR for one short epoch
with each (stylegan2_ada in the default run, the others marked slow: the same code path).
Each run must write results.json and finite metrics, move the finder through the generator (the
KL penalty is off, so only the hypergradient through G moves it), and hand its step the
generator the file holds: the frozen parameters are the ones written, and the loaded sampler
reproduces the Flax model that was written (for EDM, a Heun sampler written out here).
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from mgr_jax.errors import UserError
from mgr_jax.generators import load_generator
from mgr_jax.models import biggan as biggan_net, edm as edm_net, fastgan as fastgan_net, stylegan2
from mgr_jax.run import config_lib, train
from tests import official_files
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 10  # digits
EDM_STEPS = 2


def _draw(shapes, seed, rule):
    """float32 numpy variables shaped like `shapes`; each leaf is rule(names, shape, rng)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: np.asarray(rule(tuple(k.key for k in path), s.shape, rng), np.float32),
        shapes)


def _fan_in_normal(shape, rng):
    return rng.standard_normal(shape) / np.sqrt(max(1, int(np.prod(shape[:-1]))))


def _stylegan2_ada(tmp):
    module = stylegan2.Generator(z_dim=8, c_dim=NUM_CLASSES, w_dim=8, img_resolution=8,
                                 mapping_layers=2, channel_base=64, channel_max=8)
    rng = np.random.default_rng(1)

    def perturb(path, leaf):  # zero at init (w_avg, biases, noise strengths): make them count
        extra = 0.2 * rng.standard_normal(leaf.shape) if path[-1].key in (
            "bias", "noise_strength", "w_avg") else 0.0
        return np.asarray(leaf + extra, np.float32)

    variables = jax.tree_util.tree_map_with_path(perturb, stylegan2.random_variables(module, 0))
    path = tmp / "network-snapshot-000100.pkl"
    official_files.write_stylegan2_ada(path, module, variables)

    def reference(z, labels):
        return module.apply(variables, z, jax.nn.one_hot(labels, NUM_CLASSES),
                            noise_mode="const")
    return str(path), {}, variables, reference


def _biggan(tmp):
    # BN_eps is not visible in the weights: it travels in the JSON, through generator.kwargs.
    module = biggan_net.BigGAN(resolution=32, n_classes=NUM_CLASSES, G_ch=2, dim_z=8, shared_dim=4,
                           hier=True, G_attn="16", BN_eps=0.02, SN_eps=1e-6)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 8)),
                            jnp.zeros((1,), jnp.int32))

    def rule(names, shape, rng):
        leaf = names[-1]
        if names[0] == "batch_stats":
            return rng.uniform(0.3, 1.0, shape) if leaf == "var" else 0.1 * rng.normal(size=shape)
        if names[0] == "spectral_norm":
            u = rng.standard_normal(shape)
            return u / np.linalg.norm(u, axis=-1, keepdims=True)
        if leaf == "kernel":
            return _fan_in_normal(shape, rng)
        if leaf == "embedding":
            return rng.standard_normal(shape)
        if leaf == "gamma":
            return np.full(shape, 0.5)  # attention on (the official init is 0)
        if leaf == "gain":
            return 1.0 + 0.1 * rng.standard_normal(shape)
        return 0.1 * rng.standard_normal(shape)

    variables = _draw(shapes, 2, rule)
    path, settings = tmp / "G_ema.pth", tmp / "G_ema.json"
    official_files.write_biggan(path, settings, module, variables)

    def reference(z, labels):
        return module.apply(variables, z, labels, train=False)
    return str(path), {"kwargs_json": str(settings)}, variables, reference


def _fastgan(tmp):
    module = fastgan_net.FastGAN(ngf=2, nz=8, nc=3, im_size=256)  # 256: the smallest official size
    shapes = jax.eval_shape(module.init, {"params": jax.random.key(0),
                                          "noise": jax.random.key(1)}, jnp.zeros((1, 8)))

    def rule(names, shape, rng):
        leaf = names[-1]
        if leaf == "kernel":
            return _fan_in_normal(shape, rng)
        if leaf == "scale":  # BatchNorm gains of ~1.7: about what spectral norm takes away
            return rng.uniform(1.0, 2.0, shape)
        if leaf == "var":
            return rng.uniform(0.2, 0.4, shape)
        return 0.1 * rng.standard_normal(shape)  # biases, means, noise weights, (u, v below)

    variables = _draw(shapes, 3, rule)
    # u, v as training leaves them: the top singular vectors of W = kernel as (out, kh kw in).
    for names in official_files.flat(variables["spectral_norm"]):
        if names[-1] != "u":
            continue
        node = variables["params"]
        for key in names[:-1]:
            node = node[key]
        w = node["kernel"].reshape(-1, node["kernel"].shape[-1]).T.astype(np.float64)
        v = np.ones(w.shape[1])
        for _ in range(20):
            u = w @ v / np.linalg.norm(w @ v)
            v = w.T @ u / np.linalg.norm(w.T @ u)
        sn = variables["spectral_norm"]
        for key in names[:-1]:
            sn = sn[key]
        sn["u"], sn["v"] = u.astype(np.float32), v.astype(np.float32)
    rng = np.random.default_rng(4)  # the raw generator `g`: other weights, same buffers
    raw = dict(variables, params=jax.tree.map(
        lambda a: a + np.float32(0.3) * rng.standard_normal(a.shape, np.float32),
        variables["params"]))
    path = tmp / "all_50000.pth"
    official_files.write_fastgan(path, module, variables, raw)

    def reference(z, labels):  # noise_mode "const" (the default) draws from key(0)
        del labels
        return module.apply(variables, z, rngs={"noise": jax.random.key(0)})[0]
    return str(path), {}, variables, reference


def _heun(denoise, latents, num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """EDM's deterministic sampler (Karras et al. 2022, Algorithm 1 with S_churn = 0)."""
    i = np.arange(num_steps)
    t = (sigma_max ** (1 / rho) + i / (num_steps - 1)
         * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t = [float(s) for s in t] + [0.0]
    x = latents * t[0]
    for k in range(num_steps):
        d = (x - denoise(x, t[k])) / t[k]
        x_next = x + (t[k + 1] - t[k]) * d
        if t[k + 1] > 0:  # second-order correction, except on the last step to sigma 0
            x_next = x + (t[k + 1] - t[k]) * 0.5 * (d + (x_next - denoise(x_next, t[k + 1]))
                                                    / t[k + 1])
        x = x_next
    return x


def _edm(tmp):
    module = edm_net.build(img_resolution=8, img_channels=3, label_dim=NUM_CLASSES,
                       model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[],
                       dropout=0.0)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)),
                            jnp.ones((1,)), jnp.zeros((1, NUM_CLASSES)))

    def rule(names, shape, rng):
        if "aux_conv" in names[-2]:  # the output layer small, as the official init (1e-5) has it
            return 0.002 * _fan_in_normal(shape, rng)
        if names[-1] == "kernel":
            return _fan_in_normal(shape, rng)
        if names[-1] == "scale":
            return 1.0 + 0.1 * rng.standard_normal(shape)
        return 0.1 * rng.standard_normal(shape)

    variables = _draw(shapes, 5, rule)
    path = tmp / "network-snapshot-010000.pkl"
    official_files.write_edm(path, module, variables)

    def reference(z, labels):
        onehot = jax.nn.one_hot(labels, NUM_CLASSES)
        return _heun(lambda x, s: module.apply(variables, x, jnp.full((x.shape[0],), s),
                                               onehot), z, EDM_STEPS)
    return str(path), {"num_steps": EDM_STEPS}, variables, reference


KINDS = {"stylegan2_ada": _stylegan2_ada, "biggan": _biggan, "fastgan": _fastgan, "edm": _edm}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """kind -> (original-format checkpoint, generator.kwargs, written variables, reference
    sampler (z, labels) -> images before clipping); written once for the module."""
    return {kind: make(tmp_path_factory.mktemp(kind)) for kind, make in KINDS.items()}


def _config(kind, checkpoint, kwargs):
    """tiny_config's MGR for one epoch of 4 steps; KL off; ResNet-10 and one augmentation op
    (compile time)."""
    return tiny_config(method="mgr", num_epochs=1, log_every_steps=1, **{
        "model.arch": "resnet10",
        "generator.kind": kind, "generator.checkpoint": checkpoint, "generator.kwargs": kwargs,
        "data.subset_fraction": 0.1, "augment.num_ops": 1, "mps.kl_weight": 0.0})


def _check_loaded(kind, config, files, frozen):
    """The generator the step is given is the file's: its parameters are the ones written, and
    the loaded sampler reproduces the written Flax model (or, for EDM, the Heun sampler)."""
    _, _, variables, reference = files[kind]
    assert jax.tree.structure(frozen) == jax.tree.structure(variables)
    jax.tree.map(np.testing.assert_array_equal, frozen, variables)
    gen = load_generator(config.generator, NUM_CLASSES)  # its sampler, as run.build.build loads it
    # EDM starts from z * sigma_max (80); a random network does not denoise, so its 2-step
    # samples of |z| ~ 1 are about z * 40, all clipped: a small known latent keeps them in range.
    z = jax.random.normal(jax.random.key(7), (6,) + tuple(gen.latent_shape))
    z = z * (0.01 if kind == "edm" else 1.0)
    labels = jnp.arange(6) % NUM_CLASSES
    got = np.asarray(jax.jit(gen.sample)(frozen, z, labels))
    want = np.clip(np.asarray(jax.jit(reference)(z, labels)), -1.0, 1.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    # ...and that comparison can fail: the images vary with z and are mostly not clipped.
    assert float(np.std(got, axis=0).mean()) > 1e-2
    assert float(np.mean(np.abs(got) < 0.999)) > 0.5
    return gen, z, labels


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_loads_its_file_and_passes_the_latent_gradient(kind, files):
    """What MGR needs of a generator, without training: the file's parameters and sampler, and
    a derivative of the images w.r.t. z (the MPS hypergradient's way to the finder) that
    agrees with a central difference along a random direction."""
    checkpoint, kwargs, _, _ = files[kind]
    config = _config(kind, checkpoint, kwargs)
    gen = load_generator(config.generator, NUM_CLASSES)
    gen, z, labels = _check_loaded(kind, config, files, gen.params)
    shape = jax.eval_shape(gen.sample, gen.params, z, labels).shape
    weights = jax.random.normal(jax.random.key(8), shape)
    score = jax.jit(lambda z: jnp.sum(gen.sample(gen.params, z, labels) * weights))
    direction = jax.random.normal(jax.random.key(9), z.shape)
    direction = direction * (0.01 if kind == "edm" else 1.0)
    grad = jax.grad(score)(z)
    assert np.all(np.isfinite(grad)) and float(jnp.max(jnp.abs(grad))) > 0
    analytic = float(jnp.vdot(grad, direction))
    # It agrees with a central difference; ReLU and clipping kinks make it rough (BigGAN,
    # FastGAN: 3-6 % off at eps 1e-3, 40 % at 1e-2), hence the loose bound.
    eps = 1e-3
    numeric = float((score(z + eps * direction) - score(z - eps * direction)) / (2 * eps))
    np.testing.assert_allclose(analytic, numeric, rtol=0.1)


# The main job for every kind is the same code path: stylegan2_ada (the paper's generator) runs
# in the default suite; the others are slow (the test above covers what differs per kind).
@pytest.mark.parametrize("kind", [k if k == "stylegan2_ada" else pytest.param(
    k, marks=pytest.mark.slow) for k in sorted(KINDS)])
def test_main_job_trains_mgr_with_each_kind(kind, files, tmp_path):
    checkpoint, kwargs, variables, reference = files[kind]
    config = _config(kind, checkpoint, kwargs)
    workdir = str(tmp_path / "run")
    results = train.train_and_evaluate(config, workdir)

    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    assert saved["method"] == "mgr" and saved["best_epoch"] == 1 == results["best_epoch"]
    assert np.isfinite(saved["val_top1"]) and np.isfinite(saved["test_top1"])
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    steps = [r for r in records if r["kind"] == "train"]
    assert len(steps) >= 2 and [r["kind"] for r in records].count("epoch") == 1
    for r in steps:
        assert all(np.isfinite(r[k]) for k in ("loss", "ce", "syn", "meta_loss"))
        assert r["syn"] > 0 and r["hypergrad_norm"] > 0  # the images matter, G passes gradient

    start = train.setup(config)  # what the run started from
    method, state0 = start.method, start.state
    state = train.restore_state(config, workdir)
    assert int(state.step) == len(steps)
    moved = [float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(
        jax.tree.leaves(state.meta["params"]), jax.tree.leaves(state0.meta["params"]))]
    assert max(moved) > 0, "the finder did not move"
    _check_loaded(kind, config, files, method.frozen["generator"])


@pytest.mark.parametrize("file_kind,as_kind,why", [
    ("fastgan", "biggan", "not a BigGAN Generator state_dict"),
    ("biggan", "fastgan", "not a FastGAN Generator state_dict"),
    ("edm", "stylegan2_ada", "refusing to load torch.nn.modules.container.ModuleDict"),
    ("stylegan2_ada", "edm", "not an EDM snapshot")])
def test_checkpoint_of_another_kind_is_a_one_line_error(files, file_kind, as_kind, why,
                                                        tmp_path):
    checkpoint = files[file_kind][0]
    workdir = tmp_path / "run"
    with pytest.raises(UserError) as e:
        train.train_and_evaluate(_config(as_kind, checkpoint, {}), str(workdir))
    message = str(e.value)
    assert "\n" not in message and why in message
    assert f"generator.checkpoint={checkpoint!r}" in message
    assert f"generator.kind={as_kind}" in message
    assert not workdir.exists()  # bad input writes nothing


def test_loader_settings_come_from_generator_kwargs(files):
    config = _config("fastgan", files["fastgan"][0], {"num_steps": 2})  # an EDM setting
    with pytest.raises(UserError, match="generator.kwargs=.*num_steps"):
        load_generator(config.generator, NUM_CLASSES)
    with pytest.raises(UserError, match="generator.kwargs"):
        config_lib.validate(tiny_config(method="mgr", **{"generator.kwargs": {"num_steps": 2}}))
    argv = ["main", f"--config={os.path.join(ROOT, 'configs', 'default.py')}",
            "--config.generator.kind=edm", '--config.generator.kwargs={"num_steps": 2}']
    fv = flags.FlagValues()  # main.py's flag, on its own FlagValues and argv
    config_flags.DEFINE_config_file("config", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    assert fv.config.generator.kwargs.to_dict() == {"num_steps": 2}
