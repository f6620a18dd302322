"""MGR as a library with the user's own Flax model: the classifier contract, the explicit
step builder, its refusals, and the example. Tiny CNNs on 8x12 inputs, batch 8."""
import functools
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mgr_jax import classifier, contract, hypergrad, losses, methods, synthetic
from mgr_jax.errors import UserError
from mgr_jax.finder import Finder
from mgr_jax.generators import tiny
from mgr_jax.run import build, train
from mgr_jax.run.config_lib import METHODS
from tests.helpers import tiny_config

SHAPE = (8, 12, 3)  # non-square inputs; the generator makes 8x8 images
BATCH, NUM_CLASSES, LR = 8, 10, 0.1
SYN = methods.SyntheticSettings(lambda_=0.3, batch_size=BATCH, augment_num_ops=1)


class PlainCNN(nn.Module):
    """No BatchNorm, no train keyword: (logits, features)."""
    num_classes: int = NUM_CLASSES
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(8, (3, 3), dtype=self.dtype)(x))
        features = jnp.mean(h, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(features), features


class BatchNormCNN(nn.Module):
    """BatchNorm, a `training` keyword, and a dict output."""
    @nn.compact
    def __call__(self, x, training=False):
        h = nn.Conv(8, (3, 3))(x)
        h = nn.relu(nn.BatchNorm(use_running_average=not training, momentum=0.9)(h))
        features = jnp.mean(h, axis=(1, 2))
        return {"logits": nn.Dense(NUM_CLASSES)(features), "features": features}


def _plain():
    return contract.Classifier(PlainCNN(), input_shape=SHAPE, train_kwarg=None)


def _generator():
    return tiny.load(seed=0, latent_dim=16, num_classes=NUM_CLASSES, resolution=8)


def _tx():
    return optax.sgd(LR, momentum=0.9)


def _build(method, clf=None, **mps):
    return methods.build_method(method, model=clf or _plain(), tx=_tx(),
                                learning_rate_fn=lambda step: LR, num_classes=NUM_CLASSES,
                                generator=_generator(), synthetic=SYN,
                                mps=methods.MPSSettings(**mps))


def _batch(seed=0, shape=SHAPE):
    r = np.random.default_rng(seed)
    return {"image": r.standard_normal((BATCH,) + shape).astype(np.float32),
            "label": r.integers(0, NUM_CLASSES, BATCH).astype(np.int32),
            "val_image": r.standard_normal((BATCH,) + shape).astype(np.float32),
            "val_label": r.integers(0, NUM_CLASSES, BATCH).astype(np.int32)}


@functools.lru_cache(maxsize=None)
def _steps(method, model="plain", mps=(), n=4):
    """Built method, initial state, batch, key and the metrics of n jitted steps (one compile,
    shared by the tests of one setting)."""
    clf = _plain() if model == "plain" else contract.Classifier(
        BatchNormCNN(), input_shape=SHAPE, train_kwarg="training")
    m = _build(method, clf, **dict(mps))
    k_init, k_meta = jax.random.split(jax.random.key(0))
    state0 = classifier.create_train_state(k_init, m.classifier, _tx(),
                                           meta=m.init_meta(k_meta))
    batch, rng = _batch(), jax.random.key(1)
    step = jax.jit(m.train_step)
    states, history = [state0], []
    for _ in range(n):
        state, metrics = step(states[-1], batch, rng, m.frozen)
        states.append(state)
        history.append(jax.device_get(metrics))
    return m, states, batch, rng, history


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_a_model_without_batchnorm_on_non_square_inputs(method):
    m, states, _, _, history = _steps(method)
    assert states[0].batch_stats == {} and states[-1].batch_stats == {}
    assert all(np.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] < history[0]["loss"]
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(states[0].params),
                                                     jax.tree.leaves(states[-1].params))]
    assert all(moved)
    if m.needs_val:
        before = jax.tree.leaves(states[0].meta["params"])
        after = jax.tree.leaves(states[-1].meta["params"])
        assert any(not np.array_equal(a, b) for a, b in zip(before, after))


def test_batchnorm_model_with_its_own_keyword_and_dict_output_trains_the_second_head():
    """gda_mh: the second head's size comes from the features (no layer named fc); running
    statistics follow the real batch only."""
    m, states, batch, _, history = _steps("gda_mh", "batchnorm", n=2)
    assert states[0].meta["aux_head"]["params"]["kernel"].shape == (8, NUM_CLASSES)
    assert np.isfinite(history[-1]["loss"])
    _, _, stats = m.classifier.forward(states[0].params, states[0].batch_stats,
                                       jnp.asarray(batch["image"]), True)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 states[1].batch_stats, stats)


def _dist(a, b):
    return float(jnp.sqrt(sum(jnp.sum((x - y) ** 2) for x, y in zip(jax.tree.leaves(a),
                                                                    jax.tree.leaves(b)))))


@pytest.mark.parametrize("kind,rtol", [("exact", 1e-4), ("finite_difference", 2e-2)])
def test_mps_step_with_the_users_model_is_the_meta_gradient_of_the_whole_objective(kind, rtol):
    """As tests/test_methods.py for the ResNet: the step's hypergradient (Adam's first moment
    after one update / (1 - b1)) equals `hypergrad.meta_gradient` of CE_val(theta') w.r.t.
    phi, with CE(real) + lambda PCR(x_p(phi)) rebuilt outside the step."""
    m, states, batch, rng, history = _steps(  # exact: the same compiled step as above
        "mgr", mps=() if kind == "exact" else (("hypergradient", kind),))
    state0, state1, clf = states[0], states[1], m.classifier
    got = jax.tree.map(lambda mu: mu / 0.1, optax.tree_utils.tree_get(state1.meta["opt"], "mu"))

    gen = _generator()
    k_lat, k_aug = jax.random.split(jax.random.fold_in(rng, 0))
    z, y = synthetic.draw_latents(k_lat, gen, SYN.batch_size, NUM_CLASSES)
    aug = {"num_ops": SYN.augment_num_ops, "max_magnitude": SYN.augment_max_magnitude}

    def inner(params, phi):
        logits, _, _ = clf.forward(params, state0.batch_stats, batch["image"], True)
        x01 = synthetic.synthesize(gen, gen.params, Finder().apply(phi, z), y, SHAPE[:2])
        syn = synthetic.synthetic_loss("pcr", clf, params, state0.batch_stats, x01, y, k_aug,
                                       aug_config=aug)
        return losses.cross_entropy(logits, batch["label"]) + SYN.lambda_ * syn

    def outer(params):
        logits, _, _ = clf.forward(params, state0.batch_stats, batch["val_image"], True)
        return losses.cross_entropy(logits, batch["val_label"])

    phi0, mps = state0.meta["params"], methods.MPSSettings()
    want = jax.jit(lambda theta, phi: hypergrad.meta_gradient(  # jitted: eager is slower
        inner, outer, theta, phi, history[0]["lr"], kind, mps.fd_eps))(state0.params, phi0)
    g_kl = jax.grad(lambda p: losses.kl_penalty(Finder().apply(p, z)))(phi0)
    want = jax.tree.map(lambda a, b: a + mps.kl_weight * b, want, g_kl)
    assert _dist(got, want) < rtol * _dist(want, jax.tree.map(jnp.zeros_like, want))


# Both hypergradients are slow: the example's loop is the same for each, and the FD step on a
# user's model is checked against meta_gradient above.
@pytest.mark.parametrize("hypergradients", ["exact", pytest.param(
    "exact,finite_difference", marks=pytest.mark.slow)])
def test_example_trains_the_users_cnn_with_both_hypergradients(hypergradients):
    from examples import own_cnn
    # The tiny random generator (the shipped one's loading is tested with each generator kind).
    results = own_cnn.main(["--steps", "3", "--batch_size", "8", "--augment_ops", "1",
                            "--generator", "random", "--hypergradients", hypergradients])
    assert [r["hypergradient"] for r in results] == hypergradients.split(",")
    for r in results:
        assert np.isfinite(r["last_loss"]) and np.isfinite(r["last_meta_loss"])
        assert 0.0 <= r["test_top1"] <= 100.0


# --- refusals -------------------------------------------------------------------------------

def test_setup_with_its_own_model_refuses_the_configs_resnet_weights():
    config = tiny_config(**{"model.init_checkpoint": "/some/resnet18_weights"})
    with pytest.raises(UserError, match="model.init_checkpoint is for the config's ResNet"):
        train.setup(config, model=PlainCNN())


def test_bad_method_settings_are_refused_when_the_method_is_built():
    with pytest.raises(methods.SettingError, match="mps.hypergradient='foo'"):
        methods.MPSSettings(hypergradient="foo")
    with pytest.raises(ValueError, match="method='mgrr'"):
        _build("mgrr")
    with pytest.raises(ValueError, match="lambda_=-1"):
        methods.SyntheticSettings(lambda_=-1)
    with pytest.raises(ValueError, match="finder.arch='deep'"):
        methods.MPSSettings(finder_arch="deep")
    with pytest.raises(ValueError, match="mps.fd_eps=0"):
        methods.MPSSettings(fd_eps=0)
    with pytest.raises(ValueError, match="at least two samples"):
        methods.build_method("mgr", model=_plain(), tx=_tx(), learning_rate_fn=lambda s: LR,
                             num_classes=NUM_CLASSES, generator=_generator(),
                             synthetic=methods.SyntheticSettings(batch_size=1))


def test_config_path_refuses_an_unknown_hypergradient_instead_of_running_fd():
    """`mps.hypergradient=foo` used to fall through to finite differences. build checks the
    config (config_lib.validate), then reads its settings into MPSSettings, which checks
    them again for callers that build settings themselves."""
    for key, value, message in [("mps.hypergradient", "foo", "mps.hypergradient='foo'"),
                                ("mps.meta_target", "gen", "mps.meta_target='gen'"),
                                ("mps.fd_eps", -1.0, "mps.fd_eps=-1.0"),
                                ("finder.arch", "deep", "finder.arch='deep'")]:
        config = tiny_config(method="mgr", **{key: value})
        with pytest.raises(UserError, match=message):  # config_lib's or SettingError
            build.build(config, model=PlainCNN(), tx=_tx(), learning_rate_fn=lambda s: LR,
                          num_classes=NUM_CLASSES, image_size=8)
        with pytest.raises(methods.SettingError, match=message):
            build.settings_from_config(config)


def test_missing_or_mismatched_generator_is_refused():
    kw = dict(model=_plain(), tx=_tx(), learning_rate_fn=lambda s: LR, num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="needs a generator"):
        methods.build_method("pcr", **kw)
    other = tiny.load(seed=0, latent_dim=16, num_classes=3, resolution=8)
    with pytest.raises(ValueError, match="3 classes"):
        methods.build_method("pcr", generator=other, **kw)


class LogitsOnly(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(NUM_CLASSES)(jnp.mean(x, axis=(1, 2)))


class FeatureMaps(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Conv(4, (3, 3))(x)
        return nn.Dense(NUM_CLASSES)(jnp.mean(h, axis=(1, 2))), h


class Counts(nn.Module):
    """Keeps a variable in a collection of its own, which the steps could not carry."""
    @nn.compact
    def __call__(self, x):
        f = jnp.mean(x, axis=(1, 2))
        self.variable("counters", "calls", lambda: jnp.zeros((), jnp.int32))
        return nn.Dense(NUM_CLASSES)(f), f


def test_models_outside_the_contract_are_refused_with_what_to_do():
    def build(module, **kw):
        clf = contract.Classifier(module, input_shape=SHAPE, train_kwarg=None)
        return methods.build_method("pcr", model=clf, tx=_tx(), learning_rate_fn=lambda s: LR,
                                    generator=_generator(), **{"num_classes": NUM_CLASSES, **kw})
    with pytest.raises(contract.ContractError, match="not \\(logits, features\\)"):
        build(LogitsOnly())
    with pytest.raises(contract.ContractError, match="pool feature maps"):
        build(FeatureMaps())
    with pytest.raises(contract.ContractError, match="7 logits"):
        build(PlainCNN(num_classes=7))
    with pytest.raises(contract.ContractError, match="'counters'"):
        build(Counts())
    with pytest.raises(contract.ContractError, match="needs 3 channels"):
        contract.Classifier(PlainCNN(), input_shape=(8, 8, 1))


def test_batches_outside_the_contract_are_refused_when_the_step_is_traced():
    m = _build("mgr")
    k_init, k_meta = jax.random.split(jax.random.key(0))
    state = classifier.create_train_state(k_init, m.classifier, _tx(), meta=m.init_meta(k_meta))
    batch = _batch()
    no_val = {"image": batch["image"], "label": batch["label"]}
    with pytest.raises(contract.ContractError, match="val_image"):
        jax.eval_shape(m.train_step, state, no_val, jax.random.key(0), m.frozen)
    square = _batch(shape=(8, 8, 3))
    with pytest.raises(contract.ContractError, match=r"\(N, \*\(8, 12, 3\)\)"):
        jax.eval_shape(m.train_step, state, square, jax.random.key(0), m.frozen)


class HalfPrecisionCNN(nn.Module):
    """Computes in bfloat16 without a dtype field to change."""
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(8, (3, 3), dtype=jnp.bfloat16)(x))
        features = jnp.mean(h, axis=(1, 2))
        return nn.Dense(NUM_CLASSES, dtype=jnp.bfloat16)(features), features


def test_bfloat16_compute_meets_finite_difference():
    """A dtype field: the FD hypergradient's L_syn runs on a float32 twin. Without one: a
    one-line warning. Exact, or float32 compute: neither."""
    twin = methods.finite_difference_classifier(
        contract.Classifier(PlainCNN(dtype=jnp.bfloat16), input_shape=SHAPE, train_kwarg=None),
        methods.MPSSettings(hypergradient="finite_difference"),
        *contract.Classifier(PlainCNN(dtype=jnp.bfloat16), input_shape=SHAPE,
                             train_kwarg=None).output_shapes())
    assert twin.module.dtype == jnp.float32 and twin.compute_dtype == jnp.float32
    assert twin.output_shapes()[0].dtype == jnp.float32
    half = contract.Classifier(HalfPrecisionCNN(), input_shape=SHAPE, train_kwarg=None)
    with pytest.warns(UserWarning, match="finite-difference hypergradient runs the classifier"):
        _build("mgr", half, hypergradient="finite_difference")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _build("mgr", half, hypergradient="exact")
        _build("mgr", hypergradient="finite_difference")
    assert not [w for w in caught if "finite-difference" in str(w.message)]


def test_one_normalisation_for_real_and_synthetic_images():
    """The step feeds x_p through the classifier's normalize, the function real batches are
    prepared with; None means the model takes [0, 1] images."""
    seen = []

    def spy(images01):
        seen.append(images01.shape)
        return images01 * 2.0 - 1.0
    clf = contract.Classifier(PlainCNN(), input_shape=SHAPE, normalize=spy, train_kwarg=None)
    np.testing.assert_allclose(clf.prepare(np.ones((1,) + SHAPE, np.float32)), 1.0)
    variables = clf.init(jax.random.key(0))
    x01, labels = jnp.full((2,) + SHAPE, 0.25), jnp.zeros(2, jnp.int32)
    got = synthetic.synthetic_loss("gda", clf, variables["params"], {}, x01, labels,
                                   jax.random.key(0))
    logits, _, _ = clf.forward(variables["params"], {}, x01 * 2.0 - 1.0, True)
    np.testing.assert_allclose(got, losses.cross_entropy(logits, labels), rtol=1e-6)
    assert seen[-1] == (2,) + SHAPE
    identity = contract.Classifier(PlainCNN(), input_shape=(8, 8, 1), normalize=None)
    assert identity.prepare(x01) is x01


def test_synthetic_images_take_the_classifiers_size_and_channels():
    gen = _generator()
    z, y = synthetic.draw_latents(jax.random.key(0), gen, 2, NUM_CLASSES)
    rgb = synthetic.synthesize(gen, gen.params, z, y, (8, 12))
    grey = synthetic.synthesize(gen, gen.params, z, y, (6, 5), channels=1)
    assert rgb.shape == (2, 8, 12, 3) and grey.shape == (2, 6, 5, 1)
    assert float(rgb.min()) >= 0.0 and float(rgb.max()) <= 1.0
    with pytest.raises(ValueError, match="3-channel images and the classifier takes 2"):
        synthetic.synthesize(gen, gen.params, z, y, 8, channels=2)
