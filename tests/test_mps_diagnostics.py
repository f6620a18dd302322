"""Does the MPS update do what it says? On a smooth model (softplus CNN, smooth generator,
RandAugment without posterize and solarize), where the meta-objective follows its first-order
prediction: descent along the exact hypergradient, the finite-difference hypergradient's
convergence, the meta-descent log, mps.update_every, the finder optimiser's settings.

M(phi) = CE_val(theta - eta grad_theta [CE(real) + lambda PCR(x_p(phi))]) is written here
from the library's pieces (losses, synthetic, the finder), apart from `mps.mps_step`.
8x8 inputs, batch 8; every step is compiled once per session (lru_cache).
"""
import functools
import re
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mgr_jax import classifier, contract, hypergrad, losses, methods, synthetic, synthetic_augment
from mgr_jax.errors import UserError
from mgr_jax.finder import Finder
from mgr_jax.generators.base import Generator
from mgr_jax.run import build, config_lib, sharding, train
from tests.helpers import tiny_config

SHAPE = (8, 8, 3)
BATCH, NUM_CLASSES, LATENT, LR = 8, 10, 16, 0.5
SMOOTH_OPS = tuple(o for o in synthetic_augment.OPS if o not in ("posterize", "solarize"))
SYN = methods.SyntheticSettings(lambda_=1.0, batch_size=BATCH, augment_num_ops=1,
                                augment_ops=SMOOTH_OPS)
# The meta step here: the exact hypergradient applied and the FD one logged beside it, the
# meta-descent diagnostic on, no KL term (so Adam's first moment is the hypergradient alone).
MPS = (("kl_weight", 0.0), ("finder_lr", 1e-2), ("log_hypergrad_cosine", True),
       ("log_meta_descent", True))


class SoftplusCNN(nn.Module):
    """(logits, features) with softplus: M is smooth in theta (ReLU's kinks are what make the
    finite difference fail on the ResNet)."""
    @nn.compact
    def __call__(self, x):
        h = nn.softplus(nn.Conv(8, (3, 3))(x))
        features = jnp.mean(h, axis=(1, 2))
        return nn.Dense(NUM_CLASSES)(features), features


class SmoothGenerator(nn.Module):
    """z, y -> 8x8 RGB in (-0.9, 0.9): tanh layers, so x_p(phi) is smooth and never clipped."""
    @nn.compact
    def __call__(self, z, y):
        h = jnp.concatenate([z, nn.Embed(NUM_CLASSES, LATENT)(y)], -1)
        h = jnp.tanh(nn.Dense(32)(h))
        return 0.9 * jnp.tanh(nn.Dense(8 * 8 * 3)(h)).reshape(-1, 8, 8, 3)


@functools.lru_cache(maxsize=None)
def _generator():
    module = SmoothGenerator()
    params = module.init(jax.random.key(5), jnp.zeros((1, LATENT)), jnp.zeros((1,), jnp.int32))
    return Generator(sample=module.apply, params=params, latent_shape=(LATENT,),
                     num_classes=NUM_CLASSES, resolution=8, kind="smooth")


def _through_finder():
    """G'(z) = G(F_phi(z)) with phi in G's params: a PCR step on G' samples F_phi(z)."""
    gen, finder = _generator(), Finder()
    return Generator(sample=lambda p, z, y: gen.sample(p["g"], finder.apply(p["phi"], z), y),
                     params=None, latent_shape=gen.latent_shape, num_classes=NUM_CLASSES,
                     resolution=8, kind="through_finder")


def _tx():
    return optax.sgd(LR, momentum=0.9)


def _build(method="mgr", generator=None, **mps):
    clf = contract.Classifier(SoftplusCNN(), input_shape=SHAPE, train_kwarg=None)
    return methods.build_method(method, model=clf, tx=_tx(), learning_rate_fn=lambda step: LR,
                                num_classes=NUM_CLASSES, generator=generator or _generator(),
                                synthetic=SYN, mps=methods.MPSSettings(**mps))


def _state0(m):
    k_init, k_meta = jax.random.split(jax.random.key(0))
    return classifier.create_train_state(k_init, m.classifier, _tx(), meta=m.init_meta(k_meta))


@functools.lru_cache(maxsize=None)
def _start():
    """The MPS method, its initial state, batch, key, its jitted step and the first step."""
    m = _build(**dict(MPS))
    state0 = _state0(m)
    r = np.random.default_rng(0)
    batch = {"image": r.standard_normal((BATCH,) + SHAPE).astype(np.float32),
             "label": r.integers(0, NUM_CLASSES, BATCH).astype(np.int32),
             "val_image": r.standard_normal((BATCH,) + SHAPE).astype(np.float32),
             "val_label": r.integers(0, NUM_CLASSES, BATCH).astype(np.int32)}
    rng = jax.random.key(1)
    step = jax.jit(m.train_step)
    state1, metrics = step(state0, batch, rng, m.frozen)
    return m, state0, batch, rng, step, state1, jax.device_get(metrics)


@functools.lru_cache(maxsize=None)
def _objective():
    """(M(phi), the FD meta-gradient at (phi, fd_eps), z) for the first step's batch, latents
    and augmentation key, jitted (fd_eps traced: one program for every eps)."""
    m, state0, batch, rng, _, _, _ = _start()
    gen, clf = _generator(), m.classifier
    k_lat, k_aug = jax.random.split(jax.random.fold_in(rng, 0))  # the step folds in step 0
    z, y = synthetic.draw_latents(k_lat, gen, BATCH, NUM_CLASSES)
    aug = {"num_ops": SYN.augment_num_ops, "max_magnitude": 1.0, "ops": SMOOTH_OPS}

    def inner(params, phi):
        logits, _, _ = clf.forward(params, {}, batch["image"], True)
        x01 = synthetic.synthesize(gen, gen.params, Finder().apply(phi, z), y, SHAPE[:2])
        pcr = synthetic.synthetic_loss("pcr", clf, params, {}, x01, y, k_aug, aug_config=aug)
        return losses.cross_entropy(logits, batch["label"]) + SYN.lambda_ * pcr

    def outer(params):
        logits, _, _ = clf.forward(params, {}, batch["val_image"], True)
        return losses.cross_entropy(logits, batch["val_label"])

    def meta_objective(phi):
        grads = jax.grad(inner)(state0.params, phi)
        return outer(jax.tree.map(lambda t, g: t - LR * g, state0.params, grads))

    def finite_difference(phi, eps):
        return hypergrad.meta_gradient(inner, outer, state0.params, phi, LR, "finite_difference",
                                       eps)
    return jax.jit(meta_objective), jax.jit(finite_difference), z


def _norm(tree):
    return float(optax.tree_utils.tree_norm(tree))


def _sub(a, b):
    return jax.tree.map(jnp.subtract, a, b)


def _cos(a, b):
    return float(optax.tree_utils.tree_vdot(a, b)) / (_norm(a) * _norm(b))


def _step_hypergradient(state1):
    """The hypergradient the step applied: Adam's first moment after one update / (1 - b1)."""
    return jax.tree.map(lambda mu: mu / 0.1, optax.tree_utils.tree_get(state1.meta["opt"], "mu"))


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


# --- the direction and the diagnostics ------------------------------------------------------

def test_a_step_along_the_exact_hypergradient_descends_and_its_negation_ascends():
    """A plain step phi -+ alpha g along the step's exact hypergradient g, 0.03 long, changes
    M by -+ alpha ||g||^2 to first order (within 25 %; about 80 float32 ulps of M): lower
    along -g, higher along +g."""
    _, state0, _, _, _, state1, _ = _start()
    meta_objective, _, _ = _objective()
    phi0, g = state0.meta["params"], _step_hypergradient(state1)
    alpha = 0.03 / _norm(g)
    m0 = float(meta_objective(phi0))
    down = float(meta_objective(jax.tree.map(lambda p, d: p - alpha * d, phi0, g))) - m0
    up = float(meta_objective(jax.tree.map(lambda p, d: p + alpha * d, phi0, g))) - m0
    predicted = alpha * _norm(g) ** 2
    assert down < 0 < up
    assert down == pytest.approx(-predicted, rel=0.25) and up == pytest.approx(predicted,
                                                                                 rel=0.25)


def test_b_logged_meta_descent_is_the_change_of_the_meta_objective():
    """meta_loss / meta_loss_after / meta_descent are M(phi_old), M(phi_new) and their
    difference, recomputed here; the change is 30x the tolerance (one float32 ulp of M)."""
    _, state0, _, _, _, state1, metrics = _start()
    meta_objective, _, z = _objective()
    before = float(meta_objective(state0.meta["params"]))
    after = float(meta_objective(state1.meta["params"]))
    assert abs(after - before) > 3e-5
    np.testing.assert_allclose(metrics["meta_loss"], before, atol=1e-6)
    np.testing.assert_allclose(metrics["meta_loss_after"], after, atol=1e-6)
    np.testing.assert_allclose(metrics["meta_descent"], after - before, atol=1e-6)
    assert metrics["meta_descended"] == float(after < before)
    moved = Finder().apply(state1.meta["params"], z) - z
    np.testing.assert_allclose(metrics["latent_displacement"],
                               jnp.mean(jnp.linalg.norm(moved, axis=-1)), rtol=1e-5)


def test_finite_difference_hypergradient_converges_to_the_exact_one_on_a_smooth_model():
    """Central differences err by O(eps^2): the error of `meta_gradient`'s FD against the
    step's exact hypergradient falls about 10x from fd_eps 1 to 0.3 (quadratic: 11x) and
    again to 0.1, before float32 round-off takes over (below about 0.1 here; with ReLU in
    place of softplus the error is 1.4-3.7 at these eps and the cosine 0.2-0.3). The step's
    own diagnostic (log_hypergrad_cosine, FD at the default fd_eps 0.01) reports the
    agreement."""
    _, state0, _, _, _, state1, metrics = _start()
    _, finite_difference, _ = _objective()
    exact = _step_hypergradient(state1)
    errors = []
    for eps in (1.0, 0.3, 0.1):
        fd = finite_difference(state0.meta["params"], eps)
        assert _cos(exact, fd) > 0.99
        errors.append(_norm(_sub(fd, exact)) / _norm(exact))
    assert errors[0] > 4 * errors[1] and errors[1] > 1.5 * errors[2], errors
    assert metrics["hypergrad_cosine"] > 0.999
    assert abs(metrics["hypergrad_norm_ratio"] - 1.0) < 0.01


def test_normalized_hypergradient_and_sgd_take_a_step_of_the_learning_rate():
    """finder_optimizer=sgd with normalize_hypergrad: phi moves by -lr g / ||g||, exactly
    finder_lr long, whatever the hypergradient's scale."""
    _, state0, batch, rng, _, state1, _ = _start()
    m = _build(kl_weight=0.0, finder_lr=0.05, finder_optimizer="sgd", normalize_hypergrad=True)
    moved, metrics = jax.jit(m.train_step)(_state0(m), batch, rng, m.frozen)
    g = _step_hypergradient(state1)
    step = _sub(moved.meta["params"], state0.meta["params"])
    _assert_trees_close(step, jax.tree.map(lambda d: -0.05 * d / _norm(g), g), rtol=1e-3,
                        atol=1e-7)
    assert _norm(step) == pytest.approx(0.05, rel=1e-4)
    assert float(metrics["hypergrad_norm"]) == pytest.approx(_norm(g), rel=1e-4)


# --- update_every ---------------------------------------------------------------------------

def _run(method, steps):
    """States and metrics of `steps` steps of method.jit() from the first step's start."""
    _, state0, batch, rng, _, _, _ = _start()
    jitted = method.jit()
    states, history = [state0], []
    for n in range(steps):
        state, metrics = jitted.step_for(n)(states[-1], batch, rng, method.frozen)
        states.append(state)
        history.append(jax.device_get(metrics))
    return states, history


@pytest.mark.parametrize("mps,moves", [
    ({"meta_target": "generator"}, "generator"),
    ({"finder_update": "max_pcr", "kl_weight": 0.0}, "finder"),
    ({"finder_update": "max_ce", "kl_weight": 0.0}, "finder"),
    ({"hypergradient": "finite_difference", "finder_arch": "linear"}, "finder"),
])
def test_mps_ablations_update_what_they_say(mps, moves):
    """Tables 5 and 7's variants on the small model: the meta-parameters (the finder's, or G's
    with meta_target=generator, then nothing of G stays frozen) move in one step."""
    m = _build(**mps)
    state0 = _state0(m)
    _, _, batch, rng, _, _, _ = _start()
    state1, metrics = jax.jit(m.train_step)(state0, batch, rng, m.frozen)
    assert np.isfinite(metrics["loss"])
    before, after = jax.tree.leaves(state0.meta["params"]), jax.tree.leaves(state1.meta["params"])
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    if moves == "generator":
        assert m.frozen == {}
        assert jax.tree.structure(state0.meta["params"]) == jax.tree.structure(
            _generator().params)
    else:
        assert jax.tree.structure(m.frozen["generator"]) == jax.tree.structure(
            _generator().params)


def test_update_every_one_is_plain_mgr():
    m = _build(update_every=1, **dict(MPS))
    assert m.between_step is None and all(m.step_for(n) is m.train_step for n in range(6))
    _, _, batch, rng, plain_step, state1, metrics1 = _start()
    states, history = _run(m, 2)
    state2, metrics2 = plain_step(state1, batch, rng, _start()[0].frozen)
    _assert_trees_close(states[1], state1, rtol=0, atol=0)
    _assert_trees_close(states[2], state2, rtol=0, atol=0)
    _assert_trees_close(history, [metrics1, jax.device_get(metrics2)], rtol=0, atol=0)


def test_update_every_four_takes_pcr_steps_with_the_current_finder_between_meta_updates():
    """k=4: steps 0 and 4 are meta steps (plain MGR's at step 0); steps 1-3 equal a PCR step
    whose latents are F_phi(z) (PCR on G' = G o F_phi, same keys) and leave phi and its
    optimiser state as they were."""
    m = _build(update_every=4, **dict(MPS))
    assert [m.step_for(n) is m.train_step for n in range(9)] == [True, False, False, False,
                                                                 True, False, False, False, True]
    states, history = _run(m, 6)
    _, _, batch, rng, _, state1, metrics1 = _start()
    _assert_trees_close(states[1], state1, rtol=0, atol=0)
    _assert_trees_close(history[0], metrics1, rtol=0, atol=0)
    pcr = _build("pcr", generator=_through_finder())
    pcr_step = jax.jit(pcr.train_step)
    frozen = {"generator": {"g": _generator().params, "phi": states[1].meta["params"]}}
    for n in (1, 2, 3):
        want, want_metrics = pcr_step(states[n], batch, rng, frozen)
        _assert_trees_close(states[n + 1], want)
        for key, value in jax.device_get(want_metrics).items():
            np.testing.assert_allclose(history[n][key], value, rtol=1e-5, atol=1e-6)
        assert "meta_loss" not in history[n] and "latent_displacement" in history[n]
        _assert_trees_close(states[n + 1].meta, states[1].meta, rtol=0, atol=0)
        assert int(states[n + 1].step) == n + 1
    assert "meta_descent" in history[4] and "meta_loss" not in history[5]
    assert _norm(_sub(states[5].meta["params"], states[4].meta["params"])) > 0


def test_train_loop_picks_the_step_by_number_and_means_each_metric_over_its_steps():
    """train._train_epoch runs the meta step at every k-th step (counted on the host from the
    epoch's first step) and averages each metric over the steps that logged it."""
    calls = []

    def meta(state, batch, rng, frozen):
        calls.append(("meta", state.step))
        return types.SimpleNamespace(step=state.step + 1), {
            "loss": jnp.float32(2.0), "meta_descended": jnp.float32(state.step == 4)}

    def between(state, batch, rng, frozen):
        calls.append(("between", state.step))
        return types.SimpleNamespace(step=state.step + 1), {"loss": jnp.float32(1.0)}

    method = methods.Method(train_step=meta, init_meta=dict, between_step=between,
                            update_every=4)
    pipeline = types.SimpleNamespace(
        train_batches=lambda epoch, with_val: ({"image": np.zeros((1, 2), np.float32)}
                                              for _ in range(6)))
    written = []
    log = types.SimpleNamespace(write=lambda kind, step, metrics, **pos: written.append(
        (step, metrics)))
    config = types.SimpleNamespace(log_every_steps=3)
    state, means = train._train_epoch(config, method, types.SimpleNamespace(step=2), pipeline,
                                      1, sharding.create_mesh(), jax.random.key(0), log)
    assert calls == [("between", 2), ("between", 3), ("meta", 4), ("between", 5),
                     ("between", 6), ("between", 7)]
    assert state.step == 8
    assert means == {"loss": pytest.approx(7.0 / 6.0), "meta_descended": 1.0}
    assert [w[0] for w in written] == [5, 8]
    assert written[0][1] == {"loss": pytest.approx(4.0 / 3.0), "meta_descended": 1.0}


# --- settings -------------------------------------------------------------------------------

def test_finder_optimizer_settings():
    """sgd steps -lr g; the warm-up's first update uses finder_lr / warmup; the defaults
    are the paper's Adam (its update equals optax.adam's)."""
    g = {"w": jnp.array([3.0, -4.0])}
    p = {"w": jnp.zeros(2)}

    def first_update(**kw):
        tx = methods.finder_optimizer(methods.MPSSettings(**kw))
        return tx.update(g, tx.init(p), p)[0]["w"]
    np.testing.assert_allclose(first_update(finder_optimizer="sgd", finder_lr=0.1),
                               [-0.3, 0.4], rtol=1e-6)
    np.testing.assert_allclose(first_update(finder_optimizer="sgd", finder_lr=0.1,
                                            finder_warmup_steps=4), [-0.075, 0.1], rtol=1e-6)
    adam = optax.adam(1e-4)
    np.testing.assert_allclose(first_update(), adam.update(g, adam.init(p), p)[0]["w"],
                               rtol=1e-6)
    np.testing.assert_allclose(first_update(finder_b1=0.5, finder_lr=1.0), [-1.0, 1.0],
                               rtol=1e-4)


@pytest.mark.parametrize("kwargs,message", [
    ({"finder_optimizer": "rmsprop"}, "mps.finder_optimizer='rmsprop' is not valid; choose one "
                                      "of ['adam', 'sgd']"),
    ({"finder_b1": 1.0}, "mps.finder_b1=1.0 must be a number >= 0 and < 1"),
    ({"finder_b2": -0.5}, "mps.finder_b2=-0.5 must be a number >= 0 and < 1"),
    ({"normalize_hypergrad": "yes"}, "mps.normalize_hypergrad='yes' must be True or False"),
    ({"finder_warmup_steps": 2.5}, "mps.finder_warmup_steps=2.5 must be an integer >= 0"),
    ({"update_every": 0}, "mps.update_every=0 must be an integer >= 1"),
    ({"log_meta_descent": 1}, "mps.log_meta_descent=1 must be True or False"),
])
def test_bad_new_mps_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(methods.SettingError, match=re.escape(message)) as caught:
        methods.MPSSettings(**kwargs)
    assert "\n" not in str(caught.value)


def test_augment_ops_subset_and_its_checks():
    with pytest.raises(methods.SettingError, match=re.escape("augment_ops=('posterize', "
                                                             "'blur') must be a non-empty")):
        methods.SyntheticSettings(augment_ops=("posterize", "blur"))
    with pytest.raises(methods.SettingError, match="augment_ops=()"):
        methods.SyntheticSettings(augment_ops=())
    augment = jax.jit(synthetic_augment.rand_augment, static_argnames=("num_ops", "ops"))
    images = jax.random.uniform(jax.random.key(0), (16, 4, 4, 3))
    inverted = augment(jax.random.key(1), images, num_ops=1, ops=("invert",))
    np.testing.assert_allclose(inverted, 1.0 - images, atol=1e-6)
    some = augment(jax.random.key(1), images, num_ops=1, ops=("invert", "identity"))
    flipped = np.isclose(some, 1.0 - images, atol=1e-6).all(axis=(1, 2, 3))
    assert (flipped | np.isclose(some, images, atol=1e-6).all(axis=(1, 2, 3))).all()
    assert 0 < flipped.sum() < 16


def test_new_mps_fields_come_from_the_config_and_are_checked():
    config = tiny_config(method="mgr", **{
        "mps.update_every": 4, "mps.finder_b1": 0.5, "mps.normalize_hypergrad": True,
        "mps.finder_optimizer": "sgd", "mps.finder_warmup_steps": 10,
        "mps.log_meta_descent": True})
    _, mps = build.settings_from_config(config)
    assert (mps.update_every, mps.finder_b1, mps.normalize_hypergrad, mps.finder_optimizer,
            mps.finder_warmup_steps, mps.log_meta_descent) == (4, 0.5, True, "sgd", 10, True)
    assert build.settings_from_config(tiny_config(method="mgr"))[1] == methods.MPSSettings()
    # config_lib checks these values by making the settings: the settings' own messages
    for key, value, message in [("mps.update_every", 0, "mps.update_every=0 must be an "
                                 "integer >= 1"),
                                ("mps.finder_b2", 1.0, "mps.finder_b2=1.0 must be a number "
                                 ">= 0 and < 1"),
                                ("mps.finder_optimizer", "lbfgs", "mps.finder_optimizer='lbfgs'")]:
        with pytest.raises(UserError, match=re.escape(message)):
            config_lib.validate(tiny_config(method="mgr", **{key: value}), paths=False)
