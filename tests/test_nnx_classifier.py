"""Flax NNX classifiers through the contract (`mgr_jax.nnx_classifier`): the same small CNN
written in Linen and in NNX, with the same weights, gives the same forward pass and the same
MGR step; unsupported NNX state is refused; a factory draws its weights from init's key."""
import functools
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mgr_jax import classifier, contract, methods, nnx_classifier
from mgr_jax.generators import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (8, 8, 3)
BATCH, NUM_CLASSES, WIDTH, LR = 8, 10, 8, 0.1
SYN = methods.SyntheticSettings(lambda_=0.3, batch_size=BATCH, augment_num_ops=1)
# Both frameworks run the same float32 XLA ops (conv, BatchNorm moments, dot); only their
# fusion may differ, so results agree to float32 rounding.
TOL = dict(rtol=1e-5, atol=1e-6)


class LinenCNN(nn.Module):
    """conv -> BatchNorm -> relu -> mean over (H, W) = features (N, 8) -> Dense head."""
    @nn.compact
    def __call__(self, x, train=False):
        h = nn.Conv(WIDTH, (3, 3), name="conv")(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(h)
        features = jnp.mean(nn.relu(h), axis=(1, 2))
        return nn.Dense(NUM_CLASSES, name="head")(features), features


class NNXCNN(nnx.Module):
    """LinenCNN in NNX; built in eval mode, which the adapter overrides in train mode."""
    def __init__(self, *, rngs, dtype=None):
        self.conv = nnx.Conv(SHAPE[-1], WIDTH, (3, 3), dtype=dtype, rngs=rngs)
        self.bn = nnx.BatchNorm(WIDTH, momentum=0.9, use_running_average=True, dtype=dtype,
                                rngs=rngs)
        self.head = nnx.Linear(WIDTH, NUM_CLASSES, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        features = jnp.mean(nnx.relu(self.bn(self.conv(x))), axis=(1, 2))
        return self.head(features), features


def _images(seed, n=BATCH):
    return jax.random.normal(jax.random.key(seed), (n,) + SHAPE)


@functools.lru_cache(maxsize=None)
def _linen_variables():
    """Linen's init, with running statistics moved off (0, 1) so eval mode is not train's."""
    variables = contract.Classifier(LinenCNN(), input_shape=SHAPE).init(jax.random.key(0))
    stats = {"bn": {"mean": 0.3 * jnp.arange(WIDTH, dtype=jnp.float32) - 1.0,
                    "var": 0.5 + 0.1 * jnp.arange(WIDTH, dtype=jnp.float32)}}
    return {"params": variables["params"], "batch_stats": stats}


def _nnx_twin():
    """An NNXCNN instance holding Linen's weights (assigned layer by layer)."""
    model = NNXCNN(rngs=nnx.Rngs(1))  # other weights, all overwritten below
    v = _linen_variables()
    for layer in ("conv", "bn", "head"):
        for name, value in v["params"][layer].items():
            getattr(getattr(model, layer), name).set_value(value)
    for name, value in v["batch_stats"]["bn"].items():
        getattr(model.bn, name).set_value(value)
    return model


def _close(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **TOL), a, b)


@pytest.mark.parametrize("train", [True, False])
def test_nnx_and_linen_cnn_with_the_same_weights_give_the_same_forward(train):
    linen = contract.Classifier(LinenCNN(), input_shape=SHAPE)
    twin = nnx_classifier.from_nnx(_nnx_twin(), SHAPE)
    v = _linen_variables()
    _close(twin.init(jax.random.key(5)), v)  # the instance's weights, keyed as Linen's
    x = _images(1)
    want = linen.forward(v["params"], v["batch_stats"], x, train)
    got = jax.jit(twin.forward, static_argnums=3)(v["params"], v["batch_stats"], x, train)
    _close(got, want)
    # The modes differ here, so agreeing in both means the adapter switched BatchNorm.
    other = linen.forward(v["params"], v["batch_stats"], x, not train)
    assert not np.allclose(got[0], other[0], **TOL)


def _one_mgr_step(kind):
    """Initial state, state after one jitted exact-MGR step and its metrics: the Linen CNN,
    or the NNX twin passed as a bare module (`as_classifier` wraps it)."""
    model = contract.Classifier(LinenCNN(), input_shape=SHAPE) if kind == "linen" \
        else _nnx_twin()
    tx = optax.sgd(LR, momentum=0.9)
    gen = tiny.load(seed=0, latent_dim=16, num_classes=NUM_CLASSES, resolution=8)
    m = methods.build_method("mgr", model=model, tx=tx, learning_rate_fn=lambda s: LR,
                             num_classes=NUM_CLASSES, generator=gen, synthetic=SYN,
                             mps=methods.MPSSettings(), image_size=SHAPE)
    v = _linen_variables()
    init = v if kind == "linen" else None  # the NNX state starts from the instance's weights
    state0 = classifier.create_train_state(jax.random.key(0), m.classifier, tx,
                                           init_variables=init,
                                           meta=m.init_meta(jax.random.key(2)))
    r = np.random.default_rng(0)
    batch = {"image": _images(3), "label": r.integers(0, NUM_CLASSES, BATCH),
             "val_image": _images(4), "val_label": r.integers(0, NUM_CLASSES, BATCH)}
    state1, metrics = jax.jit(m.train_step)(state0, batch, jax.random.key(6), m.frozen)
    return m, state0, state1, jax.device_get(metrics)


def test_nnx_cnn_takes_the_same_mgr_step_as_its_linen_twin():
    m, nnx0, nnx1, nnx_metrics = _one_mgr_step("nnx")
    _, linen0, linen1, linen_metrics = _one_mgr_step("linen")
    assert isinstance(m.classifier.module, nnx_classifier.NNXModule)
    _close((nnx0.params, nnx0.batch_stats), (linen0.params, linen0.batch_stats))
    assert set(nnx_metrics) == set(linen_metrics)
    _close(nnx_metrics, linen_metrics)
    _close(nnx1.params, linen1.params)
    _close(nnx1.batch_stats, linen1.batch_stats)
    _close(nnx1.meta, linen1.meta)  # the finder's update: the hypergradient through the CNN
    # The step moved them (all but the conv's bias, which BatchNorm's batch mean cancels).
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), linen0.params, linen1.params)
    assert moved == {"conv": {"kernel": True, "bias": False},
                     "bn": {"scale": True, "bias": True}, "head": {"kernel": True, "bias": True}}
    assert not np.allclose(linen1.batch_stats["bn"]["mean"], linen0.batch_stats["bn"]["mean"])


class Counter(nnx.Variable):
    """A Variable type of the user's own: neither params nor batch_stats."""


class Counting(NNXCNN):
    def __init__(self, *, rngs):
        super().__init__(rngs=rngs)
        self.calls = Counter(jnp.zeros((), jnp.int32))


class WithDropout(NNXCNN):
    def __init__(self, *, rngs):
        super().__init__(rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)  # keeps an RNG stream as state


@pytest.mark.parametrize("cls,listed", [(Counting, r"calls \(Counter\)"),
                                        (WithDropout, r"dropout\.rngs\.key \(RngKey\)")])
def test_nnx_state_outside_params_and_batch_stats_is_refused(cls, listed):
    for make in (lambda: nnx_classifier.from_nnx(cls(rngs=nnx.Rngs(0)), SHAPE),
                 lambda: nnx_classifier.from_nnx(lambda rngs: cls(rngs=rngs), SHAPE),
                 lambda: contract.as_classifier(cls(rngs=nnx.Rngs(0)), SHAPE)):
        with pytest.raises(contract.ContractError, match=listed):
            make()


def test_variables_that_do_not_match_the_nnx_module_are_refused():
    clf = nnx_classifier.from_nnx(NNXCNN(rngs=nnx.Rngs(0)), SHAPE)
    params = dict(_linen_variables()["params"])
    params["dense"] = params.pop("head")
    with pytest.raises(contract.ContractError, match=r"missing \['head/bias', 'head/kernel'\]"):
        clf.forward(params, _linen_variables()["batch_stats"], _images(1), True)
    with pytest.raises(contract.ContractError, match="train_kwarg"):
        nnx_classifier.from_nnx(NNXCNN(rngs=nnx.Rngs(0)), SHAPE, train_kwarg="training")


def test_a_factory_draws_its_weights_from_inits_key():
    clf = nnx_classifier.from_nnx(lambda rngs: NNXCNN(rngs=rngs), SHAPE)
    a, again, b = (clf.init(jax.random.key(k)) for k in (0, 0, 1))
    _close(a, again)
    # The eager module built with the same key: the same weights, keyed the same way.
    eager = nnx_classifier.from_nnx(NNXCNN(rngs=nnx.Rngs(jax.random.key(0))), SHAPE)
    _close(a, eager.init(jax.random.key(9)))  # an instance's init ignores the key
    kernels = [v["params"]["conv"]["kernel"] for v in (a, b)]
    assert not np.allclose(*kernels)
    # And back: an NNX module holding given variables, in eval mode.
    model = clf.module.merge(b)
    np.testing.assert_array_equal(model.conv.kernel[...], kernels[1])
    assert isinstance(model, NNXCNN) and model.bn.use_running_average


class Deep(nnx.Module):
    """Twelve layers in an nnx.List: integer keys past 9, which sort differently as strings."""
    def __init__(self, *, rngs):
        sizes = [SHAPE[-1]] + list(range(4, 16))
        self.layers = nnx.List([nnx.Linear(i, o, rngs=rngs) for i, o in zip(sizes, sizes[1:])])

    def __call__(self, x):
        h = jnp.mean(x, axis=(1, 2))
        for layer in self.layers:
            h = jnp.tanh(layer(h))
        return h[:, :NUM_CLASSES], h


def test_list_layers_keep_their_order_through_string_keys():
    model = Deep(rngs=nnx.Rngs(0))
    clf = nnx_classifier.from_nnx(model, SHAPE)
    variables = clf.init(jax.random.key(9))
    assert sorted(variables["params"]["layers"]) == sorted(str(i) for i in range(12))
    x = _images(1)
    logits, features, stats = jax.jit(clf.forward, static_argnums=3)(variables["params"], {},
                                                                      x, True)
    want_logits, want_features = model(x)  # the instance itself, no adapter
    _close((logits, features, stats), (want_logits, want_features, {}))


def test_in_float32_computes_an_nnx_bfloat16_model_in_float32():
    half = nnx_classifier.from_nnx(NNXCNN(rngs=nnx.Rngs(0), dtype=jnp.bfloat16), SHAPE,
                                   compute_dtype=jnp.bfloat16)
    full = nnx_classifier.from_nnx(NNXCNN(rngs=nnx.Rngs(0)), SHAPE)
    v = full.init(jax.random.key(9))
    x = _images(1)
    assert half.forward(v["params"], v["batch_stats"], x, True)[0].dtype == jnp.bfloat16
    twin = half.in_float32()
    assert twin.compute_dtype == jnp.float32 and half.module.dtype is None
    _close(twin.forward(v["params"], v["batch_stats"], x, True),
           full.forward(v["params"], v["batch_stats"], x, True))


def test_example_trains_the_users_nnx_cnn_and_returns_it_as_an_nnx_module():
    from examples import own_nnx_cnn
    # The tiny random generator and the exact hypergradient: the FD step on an NNX model is
    # the same code as on a Linen one (the step above), the loop as examples/own_cnn.py's.
    [result] = own_nnx_cnn.main(["--steps", "3", "--batch_size", "8", "--augment_ops", "1",
                                 "--generator", "random", "--hypergradients", "exact"])
    assert np.isfinite(result["last_loss"]) and np.isfinite(result["last_meta_loss"])
    assert 0.0 <= result["test_top1"] <= 100.0
    model = result["model"]
    assert isinstance(model, own_nnx_cnn.SmallNNXCNN) and model.bn1.use_running_average
    assert not np.allclose(model.bn1.mean[...], 0.0)  # the trained running statistics


def test_as_classifier_takes_an_nnx_module_once_nnx_classifier_is_imported():
    """contract cannot import nnx_classifier (which imports it): the module registers itself.
    Before that, a fresh interpreter gets a refusal that names it."""
    fresh = ("from flax import nnx\nfrom mgr_jax import contract\n"
             "class Tiny(nnx.Module):\n    pass\n"
             "try:\n    contract.as_classifier(Tiny(), 8)\n"
             "except contract.ContractError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", fresh], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert "Classifier(module=Tiny)" in out and "mgr_jax.nnx_classifier (from_nnx, or import" in out
    clf = contract.as_classifier(NNXCNN(rngs=nnx.Rngs(0)), SHAPE)  # imported by this file
    assert isinstance(clf.module, nnx_classifier.NNXModule) and clf.input_shape == SHAPE
