"""Losses against hand-computed values, gradients and their defining properties."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64
from jax.test_util import check_grads

from mgr_jax import losses


def test_cross_entropy_hand_values():
    logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    labels = jnp.array([0, 1])
    # -log softmax: log(e^2 + 2) - 2 and log(1 + e + e^3) - 1.
    want = ((np.log(np.e ** 2 + 2) - 2) + (np.log(1 + np.e + np.e ** 3) - 1)) / 2
    np.testing.assert_allclose(losses.cross_entropy(logits, labels), want, rtol=1e-6)


def test_pcr_loss_hand_value_and_gradient_reaches_both_branches():
    a = jnp.array([[1.0, 2.0], [0.0, -1.0]])
    b = jnp.array([[0.0, 0.0], [1.0, 1.0]])
    # ((1 + 4) + (1 + 4)) / 2
    np.testing.assert_allclose(losses.pcr_loss(a, b), 5.0)
    ga, gb = jax.grad(losses.pcr_loss, argnums=(0, 1))(a, b)
    np.testing.assert_allclose(ga, (a - b), rtol=1e-6)  # 2 (a - b) / N with N = 2
    np.testing.assert_allclose(gb, -(a - b), rtol=1e-6)
    check_grads(losses.pcr_loss, (a, b), order=2, modes=["rev"])


def test_pcr_gradient_flows_through_both_branches_of_a_shared_extractor():
    """Eq. 5 has no stop-gradient: g(T(x)) and g(x) both contribute to grad_theta."""
    x = jnp.array([[1.0, 2.0], [3.0, -1.0]])
    w = jnp.array([[0.5, -0.2], [0.1, 0.3]])
    aug = lambda v: 1.5 * v + 0.1  # noqa: E731

    def through(w, stop_aug, stop_plain):
        fa, fp = aug(x) @ w, x @ w
        fa = jax.lax.stop_gradient(fa) if stop_aug else fa
        fp = jax.lax.stop_gradient(fp) if stop_plain else fp
        return losses.pcr_loss(fa, fp)

    full = jax.grad(through)(w, False, False)
    only_aug = jax.grad(through)(w, False, True)
    only_plain = jax.grad(through)(w, True, False)
    assert np.abs(only_aug).max() > 0 and np.abs(only_plain).max() > 0
    np.testing.assert_allclose(full, only_aug + only_plain, rtol=1e-5)


def test_kl_penalty_hand_value_and_zero_for_standard_normal():
    w = jnp.array([[1.0, 0.0], [3.0, 2.0]])  # mu = (2, 1), var = (1, 1)
    want = np.mean([-0.5 * (1 + 0 - 4 - 1), -0.5 * (1 + 0 - 1 - 1)])
    np.testing.assert_allclose(losses.kl_penalty(w), want, rtol=1e-6)
    z = jax.random.normal(jax.random.key(0), (20000, 16))
    assert abs(float(losses.kl_penalty(z))) < 2e-3
    assert float(losses.kl_penalty(2.0 * z + 1.0)) > 0.5


def test_uda_masks_unconfident_samples_and_is_zero_when_none_pass():
    weak = jnp.array([[5.0, 0.0], [0.1, 0.0]])  # only the first is confident (p > 0.8).
    strong = jnp.array([[1.0, 1.0], [3.0, -3.0]])
    t = jax.nn.softmax(weak[0] / 0.4)
    s = jax.nn.softmax(strong[0])
    want = float(jnp.sum(t * (jnp.log(t) - jnp.log(s)))) / 2  # batch mean, masked count as 0.
    np.testing.assert_allclose(losses.uda_loss(weak, strong), want, rtol=1e-5)
    unsure = jnp.zeros((3, 4))
    assert float(losses.uda_loss(unsure, jax.random.normal(jax.random.key(1), (3, 4)))) == 0.0
    # the weak branch is the target: no gradient reaches it.
    g = jax.grad(lambda w: losses.uda_loss(w, strong))(weak)
    np.testing.assert_array_equal(g, 0.0)


def test_multi_head_gda_loss_is_cross_entropy_of_the_second_head():
    logits = jax.random.normal(jax.random.key(2), (5, 3))
    labels = jnp.array([0, 2, 1, 1, 0])
    np.testing.assert_allclose(losses.multi_head_gda_loss(logits, labels),
                               losses.cross_entropy(logits, labels))


# --- float64, shapes and refusals -----------------------------------------------------------

def _float64_inputs():
    r = np.random.default_rng(3)
    return {"a": jnp.asarray(r.normal(size=(4, 5))), "b": jnp.asarray(r.normal(size=(4, 5))),
            "w": jnp.asarray(r.normal(size=(6, 3))), "labels": jnp.asarray([0, 4, 2, 1])}


def test_float64_gradients_of_every_loss_match_finite_differences():
    """With x64 on, the losses keep float64, so jax.test_util.check_grads' central differences
    (float64 tolerances) hold through them."""
    with enable_x64():
        x = _float64_inputs()
        assert x["a"].dtype == jnp.float64
        for value in (losses.pcr_loss(x["a"], x["b"]), losses.kl_penalty(x["w"]),
                      losses.cross_entropy(x["a"], x["labels"]),
                      losses.uda_loss(3.0 * x["a"], x["b"], threshold=0.5)):
            assert value.dtype == jnp.float64
        # The losses jitted: check_grads then compiles each derivative once instead of every
        # operation of it alone.
        check_grads(jax.jit(losses.pcr_loss), (x["a"], x["b"]), order=2, modes=["fwd", "rev"])
        check_grads(jax.jit(losses.kl_penalty), (x["w"],), order=2, modes=["fwd", "rev"])
        check_grads(jax.jit(lambda a: losses.cross_entropy(a, x["labels"])), (x["a"],),
                    order=2, modes=["fwd", "rev"])
        # the weak branch is a stop-gradient target: the strong branch carries the gradient.
        weak = 3.0 * x["a"]
        assert float(losses.uda_loss(weak, x["b"], threshold=0.5)) > 0
        check_grads(jax.jit(lambda s: losses.uda_loss(weak, s, threshold=0.5)), (x["b"],),
                    order=2, modes=["fwd", "rev"])
    assert jnp.zeros(1).dtype == jnp.float32  # x64 is off again


def test_half_precision_inputs_are_computed_in_float32():
    a = jnp.ones((2, 3), jnp.bfloat16)
    assert losses.pcr_loss(a, 0 * a).dtype == jnp.float32
    assert losses.cross_entropy(a, jnp.array([0, 1])).dtype == jnp.float32
    np.testing.assert_allclose(losses.pcr_loss(a, 0 * a), 3.0)


def test_losses_refuse_bad_ranks_and_shapes_when_traced():
    f = jnp.zeros((4, 6))
    with pytest.raises(ValueError, match=r"pcr_loss: features must be \(N, D\)"):
        losses.pcr_loss(f, jnp.zeros(6))  # (N, D) against (D,) used to broadcast
    with pytest.raises(ValueError, match="features_aug must be"):
        jax.jit(losses.pcr_loss)(jnp.zeros((4, 2, 2, 6)), jnp.zeros((4, 2, 2, 6)))
    with pytest.raises(ValueError, match="same shape"):
        losses.pcr_loss(f, jnp.zeros((4, 5)))
    with pytest.raises(ValueError, match="at least two samples"):
        losses.kl_penalty(jnp.zeros((1, 8)))  # used to return ~13.7 (log of the floor)
    with pytest.raises(ValueError, match="kl_penalty: w must be"):
        losses.kl_penalty(jnp.zeros(8))
    with pytest.raises(ValueError, match=r"labels must be \(N,\)"):
        losses.cross_entropy(f, jnp.zeros((4, 1), jnp.int32))
    with pytest.raises(ValueError, match="integer class indices"):
        losses.cross_entropy(f, jnp.zeros(4))
    with pytest.raises(ValueError, match="logits must be"):
        losses.cross_entropy(jnp.zeros(6), jnp.zeros((), jnp.int32))
    with pytest.raises(ValueError, match="same shape"):
        losses.uda_loss(f, jnp.zeros((4, 5)))
