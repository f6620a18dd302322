"""A regulariser registered from outside mgr_jax trains through `build_method` and through the
config path, and its step is the one its loss defines (replayed independently here)."""
import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flax.linen as nn

from mgr_jax import classifier, contract, losses, methods, regularisers, synthetic
from mgr_jax.errors import UserError
from mgr_jax.generators import load_generator, tiny
from mgr_jax.run import config_lib, train
from tests.helpers import tiny_config

SHAPE, BATCH, NUM_CLASSES, LR, LAM = (8, 8, 3), 8, 10, 0.1, 0.5


def feature_energy(inputs):
    """A user's L_syn: the mean squared feature of x_p, scaled by its own setting."""
    _, features = inputs.forward(inputs.images)
    return inputs.settings["scale"] * jnp.mean(jnp.square(features))


ENERGY = regularisers.Regulariser("feature_energy", feature_energy, uniform="energy",
                                  mps="energy_mps", settings={"scale": 2.0})


@pytest.fixture
def registered():
    regularisers.register(ENERGY)
    yield ENERGY
    regularisers.unregister(ENERGY.name)


class PlainCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        features = jnp.mean(nn.relu(nn.Conv(6, (3, 3))(x)), axis=(1, 2))
        return nn.Dense(NUM_CLASSES)(features), features


def _replay(m, state0, batch, rng, gen):
    """CE(real) + lambda * 2 mean(g(x_p)^2) on the step's own draws, as a function of params."""
    k_lat, _ = jax.random.split(jax.random.fold_in(rng, 0))
    z, y = synthetic.draw_latents(k_lat, gen, BATCH, NUM_CLASSES)
    x01 = synthetic.synthesize(gen, gen.params, z, y, SHAPE[:2])
    clf = m.classifier

    def objective(params):
        logits, _, _ = clf.forward(params, {}, batch["image"], True)
        _, feats, _ = clf.forward(params, {}, clf.prepare(x01), True)
        return losses.cross_entropy(logits, batch["label"]) + LAM * 2.0 * jnp.mean(feats ** 2)
    return objective


def test_registered_regulariser_trains_through_build_method(registered):
    assert {"energy", "energy_mps"} <= set(methods.method_names())
    gen = tiny.load(seed=0, latent_dim=16, num_classes=NUM_CLASSES, resolution=8)
    clf = contract.Classifier(PlainCNN(), input_shape=SHAPE, train_kwarg=None)
    m = methods.build_method("energy", model=clf, tx=optax.sgd(LR),
                             learning_rate_fn=lambda s: LR, num_classes=NUM_CLASSES,
                             generator=gen,
                             synthetic=methods.SyntheticSettings(lambda_=LAM, batch_size=BATCH))
    state0 = classifier.create_train_state(jax.random.key(0), clf, optax.sgd(LR),
                                           meta=m.init_meta(jax.random.key(1)))
    r = np.random.default_rng(0)
    batch = {"image": r.standard_normal((BATCH,) + SHAPE).astype(np.float32),
             "label": r.integers(0, NUM_CLASSES, BATCH).astype(np.int32)}
    rng = jax.random.key(2)
    state1, metrics = jax.jit(m.train_step)(state0, batch, rng, m.frozen)
    objective = _replay(m, state0, batch, rng, gen)
    want_loss, grads = jax.value_and_grad(objective)(state0.params)
    np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
    want = jax.tree.map(lambda p, g: p - LR * g, state0.params, grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 state1.params, want)

    mps = methods.build_method("energy_mps", model=clf, tx=optax.sgd(LR),
                               learning_rate_fn=lambda s: LR, num_classes=NUM_CLASSES,
                               generator=gen, synthetic=methods.SyntheticSettings(
                                   lambda_=LAM, batch_size=BATCH))
    assert mps.needs_val and mps.name == "energy_mps"


def test_registered_regulariser_trains_through_the_config_path(registered, tmp_path):
    config = tiny_config(method="energy", lambda_=LAM, num_epochs=1)
    config.feature_energy = ml_collections.ConfigDict({"scale": 3.0})  # its own section
    config_lib.validate(config)
    start = train.setup(config)
    assert start.method.name == "energy"
    batch = next(start.pipeline.train_batches(1, with_val=False))
    _, metrics = jax.jit(start.method.train_step)(start.state, batch, start.loop_rng,
                                                  start.method.frozen)
    # The logged synthetic loss is the user's: 3 * mean(g(x_p)^2) on the step's x_p.
    gen = load_generator(config.generator, NUM_CLASSES)
    k_lat, _ = jax.random.split(jax.random.fold_in(start.loop_rng, 0))
    z, y = synthetic.draw_latents(k_lat, gen, config.synthetic_batch_size, NUM_CLASSES)
    x01 = synthetic.synthesize(gen, gen.params, z, y, config.data.image_size)
    clf = start.method.classifier
    _, feats, _ = clf.forward(start.state.params, start.state.batch_stats, clf.prepare(x01),
                              True)
    np.testing.assert_allclose(metrics["syn"], 3.0 * jnp.mean(feats ** 2), rtol=1e-4)
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert results["method"] == "energy" and np.isfinite(results["test_top1"])


def test_registry_refuses_taken_names_unknown_methods_and_settings(registered):
    with pytest.raises(ValueError, match="registered"):
        regularisers.register(ENERGY)
    with pytest.raises(ValueError, match="taken"):
        regularisers.register(regularisers.Regulariser("other", feature_energy, uniform="pcr"))
    config = tiny_config(method="energy")
    config.feature_energy = ml_collections.ConfigDict({"sclae": 3.0})
    with pytest.raises(UserError, match="feature_energy.sclae is not a setting"):
        config_lib.validate(config)
    regularisers.unregister(ENERGY.name)
    with pytest.raises(UserError, match="method='energy' is not valid"):
        config_lib.validate(tiny_config(method="energy"))
    regularisers.register(ENERGY)  # for the fixture's teardown
