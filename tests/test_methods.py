"""Every method's jitted train step on the small default; the MPS step's invariants."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mgr_jax import classifier, hypergrad, losses, synthetic
from mgr_jax.run import train
from mgr_jax.run.config_lib import METHODS
from tests.helpers import one_stage_resnet, tiny_config

# Every test here runs a one-stage ResNet (stem and one basic block, BatchNorm) with one
# augmentation op and lambda 0.3: the programs the tests compile stay small, and tests of one
# method and setting share one compiled step.
SMALL = {"generator.kind": "random", "generator.resolution": 8, "augment.num_ops": 1,
         "lambda_": 0.3}


def _setup(method, **overrides):
    config = tiny_config(method=method, **{**SMALL, **overrides})
    start = train.setup(config, model=one_stage_resnet(config))
    pipeline, model, m, state, rng = (start.pipeline, start.model, start.method, start.state,
                                      start.loop_rng)
    batch = next(pipeline.train_batches(1, with_val=m.needs_val))
    return config, model, m, state, rng, batch


@functools.lru_cache(maxsize=None)
def _compiled_cached(method, overrides):
    config, model, m, state0, rng, batch = _setup(method, **dict(overrides))
    return config, model, m, state0, rng, batch, jax.jit(m.train_step)


def _compiled(method, **overrides):
    """_setup and its jitted step, shared by the tests of one config (one compile)."""
    return _compiled_cached(method, tuple(sorted(overrides.items())))


@functools.lru_cache(maxsize=None)
def _first_step_cached(method, overrides):
    config, model, m, state0, rng, batch, step = _compiled_cached(method, overrides)
    state1, metrics = step(state0, batch, rng, m.frozen)
    return config, model, m, state0, rng, batch, state1, metrics


def _first_step(method, **overrides):
    """One jitted step from _setup, shared by the tests of one config."""
    return _first_step_cached(method, tuple(sorted(overrides.items())))


# The one-stage ResNet with BatchNorm: base and mgr (whose step the tests below share) in the default run;
# test_library_api's every-method test covers the same step of each method on a small model.
@pytest.mark.parametrize("method", [m if m in ("base", "mgr") else pytest.param(
    m, marks=pytest.mark.slow) for m in METHODS])
def test_each_method_lowers_its_loss_on_a_fixed_batch(method):
    _, _, m, state, rng, batch, step = _compiled(method)
    history = []
    for _ in range(6):
        state, metrics = step(state, batch, rng, m.frozen)
        history.append(jax.device_get(metrics))
    assert all(np.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["accuracy"] >= history[0]["accuracy"]


def _aug(config):
    return {"num_ops": config.augment.num_ops, "max_magnitude": config.augment.max_magnitude}


def _replay_draws(config, rng):
    """The first MPS step's generator, latents z, labels y_p and augmentation key."""
    from mgr_jax.generators import load_generator
    gen = load_generator(config.generator, 10)
    k_lat, k_aug = jax.random.split(jax.random.fold_in(rng, 0))
    z, y = synthetic.draw_latents(k_lat, gen, config.synthetic_batch_size, 10)
    return gen, z, y, k_aug


def _replay_objective(config, model, state0, batch, rng):
    """The first MGR step's draws rebuilt outside it: (CE(real) + lambda PCR(x_p(phi)) as a
    function of (params, phi), the latents z)."""
    from mgr_jax.finder import Finder
    gen, z, y, k_aug = _replay_draws(config, rng)

    def objective(params, phi):
        logits, _, _ = classifier.classifier_forward(model, params, state0.batch_stats,
                                                batch["image"], True)
        x01 = synthetic.synthesize(gen, gen.params, Finder().apply(phi, z), y, 8)
        syn = synthetic.synthetic_loss("pcr", model, params, state0.batch_stats, x01, y, k_aug,
                                       aug_config=_aug(config))
        return losses.cross_entropy(logits, batch["label"]) + config.lambda_ * syn
    return objective, z


def test_mps_step_touches_stats_and_optimiser_only_through_the_real_step():
    """After one MGR step: BN stats = one real-batch update; SGD trace = grad of the real step
    with x_p regenerated from the *updated* finder; the finder moved."""
    config, model, m, state0, rng, batch, state1, _ = _first_step("mgr")

    _, _, stats_real = classifier.classifier_forward(model, state0.params, state0.batch_stats,
                                                batch["image"], True)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 state1.batch_stats, stats_real)

    phi0, phi1 = state0.meta["params"], state1.meta["params"]
    moved = sum(float(jnp.abs(a - b).sum()) for a, b in zip(jax.tree.leaves(phi0),
                                                           jax.tree.leaves(phi1)))
    assert moved > 0

    # Rebuild the step's draws and the real-step gradient independently.
    real_objective, _ = _replay_objective(config, model, state0, batch, rng)
    real_grad = jax.jit(jax.grad(real_objective))  # one compile for both finders
    want = real_grad(state0.params, phi1)
    stale = real_grad(state0.params, phi0)
    trace = optax.tree_utils.tree_get(state1.opt_state, "trace")  # = grads after one step.

    def dist(a, b):
        return float(jnp.sqrt(sum(jnp.sum((x - y) ** 2) for x, y in zip(jax.tree.leaves(a),
                                                                        jax.tree.leaves(b)))))
    scale = dist(want, jax.tree.map(jnp.zeros_like, want))
    assert dist(trace, want) < 1e-4 * scale  # float32 round-off only.
    # ... and closer to it than to the gradient with the stale finder.
    assert dist(trace, want) < 0.1 * dist(trace, stale)


def _dist(a, b):
    return float(jnp.sqrt(sum(jnp.sum((x - y) ** 2) for x, y in zip(jax.tree.leaves(a),
                                                                    jax.tree.leaves(b)))))


# The finite-difference variant is slow: test_library_api runs the same check of the FD step
# with a small user model, and test_mps_diagnostics its convergence to the exact hypergradient.
@pytest.mark.parametrize("kind,rtol", [("exact", 1e-4), pytest.param(
    "finite_difference", 2e-2, marks=pytest.mark.slow)])
def test_mps_hypergradient_is_the_meta_gradient_of_the_whole_objective(kind, rtol):
    """The step's image-space hypergradient pulled back through G equals the generic
    `hypergrad.meta_gradient` of CE_val(theta') w.r.t. phi, with L_syn a function of phi."""
    overrides = {} if kind == "exact" else {"mps.hypergradient": kind}  # exact: the default
    config, model, m, state0, rng, batch, state1, metrics = _first_step("mgr", **overrides)
    assert config.mps.hypergradient == kind
    # Adam's first moment after its first update is (1 - b1) g: the step's hypergradient.
    got = jax.tree.map(lambda mu: mu / 0.1, optax.tree_utils.tree_get(state1.meta["opt"], "mu"))

    inner, z = _replay_objective(config, model, state0, batch, rng)

    def outer(params):
        logits, _, _ = classifier.classifier_forward(model, params, state0.batch_stats,
                                                batch["val_image"], True)
        return losses.cross_entropy(logits, batch["val_label"])

    phi0 = state0.meta["params"]
    want = jax.jit(lambda theta, phi, lr: hypergrad.meta_gradient(
        inner, outer, theta, phi, lr, kind, config.mps.fd_eps))(state0.params, phi0, metrics["lr"])
    from mgr_jax.finder import Finder
    g_kl = jax.grad(lambda p: losses.kl_penalty(Finder().apply(p, z)))(phi0)
    want = jax.tree.map(lambda a, b: a + config.mps.kl_weight * b, want, g_kl)
    assert _dist(got, want) < rtol * _dist(want, jax.tree.map(jnp.zeros_like, want))


@pytest.mark.parametrize("update,loss_kind", [("max_ce", "gda"), ("max_pcr", "pcr")])
def test_finder_without_meta_learning_ascends_its_loss(update, loss_kind):
    """Table 7: the MGR classifier keeps PCR, the finder takes Adam's step along
    +lambda grad_phi of CE (the paper's "w/ CE") or PCR of the classifier on x_p(phi)."""
    config, model, m, state0, rng, batch, state1, _ = _first_step(
        "mgr", **{"mps.finder_update": update, "mps.kl_weight": 0.0})
    got = jax.tree.map(lambda mu: mu / 0.1, optax.tree_utils.tree_get(state1.meta["opt"], "mu"))

    from mgr_jax.finder import Finder
    gen, z, y, k_aug = _replay_draws(config, rng)

    def finder_objective(phi):
        x01 = synthetic.synthesize(gen, gen.params, Finder().apply(phi, z), y, 8)
        return config.lambda_ * synthetic.synthetic_loss(loss_kind, model, state0.params,
                                                         state0.batch_stats, x01, y, k_aug,
                                                         aug_config=_aug(config))
    want = jax.tree.map(jnp.negative, jax.jit(jax.grad(finder_objective))(state0.meta["params"]))
    assert _dist(got, want) < 1e-4 * _dist(want, jax.tree.map(jnp.zeros_like, want))


# The max_pcr / max_ce variants share their compiled step with the test above; the other two
# are slow here: test_mps_diagnostics runs all four on a small model.
@pytest.mark.parametrize("overrides,moves", [
    pytest.param({"mps.meta_target": "generator"}, "generator", marks=pytest.mark.slow),
    ({"mps.finder_update": "max_pcr", "mps.kl_weight": 0.0}, "finder"),
    ({"mps.finder_update": "max_ce", "mps.kl_weight": 0.0}, "finder"),
    pytest.param({"mps.hypergradient": "finite_difference", "finder.arch": "linear"}, "finder",
                 marks=pytest.mark.slow),
])
def test_mps_ablations_update_what_they_say(overrides, moves):
    _, _, m, state0, rng, batch, state1, metrics = _first_step("mgr", **overrides)
    assert np.isfinite(metrics["loss"])
    before, after = jax.tree.leaves(state0.meta["params"]), jax.tree.leaves(state1.meta["params"])
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    assert m.frozen == ({} if moves == "generator" else m.frozen)


@pytest.mark.slow  # test_mps_diagnostics checks the logged cosine and norm ratio (against 1)
def test_hypergradient_cosine_is_logged_on_request():
    *_, metrics = _first_step("mgr", **{"mps.log_hypergrad_cosine": True})
    assert -1.0 <= float(metrics["hypergrad_cosine"]) <= 1.0
    assert float(metrics["hypergrad_norm_ratio"]) > 0


def test_method_without_generator_is_a_clear_error():
    from mgr_jax.run import config_lib
    from mgr_jax.errors import UserError
    with pytest.raises(UserError, match="generator.kind"):
        config_lib.validate(tiny_config(method="pcr", **{"generator.kind": ""}))
