"""meta_gradient against closed forms and finite differences of the unrolled objective."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from mgr_jax import hypergrad

RNG = np.random.default_rng(0)
A = RNG.normal(size=(3, 3))
A = A @ A.T + np.eye(3)
B = RNG.normal(size=(3, 2))
C = RNG.normal(size=(3, 3))
C = C @ C.T + np.eye(3)
T0 = RNG.normal(size=3)


def quadratic_problem():
    """inner = 1/2 th'A th + th'B phi (+ a phi-only term), outer = 1/2 (th - t0)'C(th - t0)."""
    def inner(theta, phi):
        th, p = theta["w"], phi["p"]
        return 0.5 * th @ A @ th + th @ B @ p + jnp.sum(p ** 2)

    def outer(theta):
        d = theta["w"] - T0
        return 0.5 * d @ C @ d
    return inner, outer


@pytest.mark.parametrize("method", ["exact", "finite_difference"])
def test_quadratic_closed_form(method):
    """theta' = th - eta (A th + B phi): d outer / d phi = -eta B' C (theta' - t0)."""
    inner, outer = quadratic_problem()
    th, p, eta = jnp.array([0.3, -0.2, 0.5]), jnp.array([0.1, 0.4]), 0.1
    want = -eta * B.T @ C @ (th - eta * (A @ th + B @ p) - T0)
    got = hypergrad.meta_gradient(inner, outer, {"w": th}, {"p": p}, eta, method=method)
    np.testing.assert_allclose(got["p"], want, rtol=2e-4, atol=1e-6)


def _mlp_problem(alpha):
    """A small tanh MLP; alpha scales the non-quadratic part of the inner loss."""
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (8, 3))
    y = jax.random.normal(k[1], (8,))
    theta = {"w1": 0.5 * jax.random.normal(k[2], (3, 4)), "w2": 0.5 * jax.random.normal(k[3], (4,))}
    phi = {"s": jnp.array([0.3, -0.1, 0.2])}

    def net(t, inputs):
        return jnp.tanh(inputs @ t["w1"]) @ t["w2"]

    def inner(t, p):
        fit = jnp.mean((net(t, x) - y) ** 2)
        linear_part = sum(jnp.sum(v) for v in jax.tree.leaves(t)) * jnp.sum(p["s"])
        return fit + jnp.sum((net(t, x + p["s"]) ** 2)) * alpha + linear_part

    def outer(t):
        return jnp.mean((net(t, x * 0.5) - y) ** 2)
    return inner, outer, theta, phi


def test_exact_matches_central_differences_of_the_unrolled_objective():
    with enable_x64():
        inner, outer, theta, phi = _mlp_problem(alpha=1.0)
        theta = jax.tree.map(lambda a: a.astype(jnp.float64), theta)
        phi = jax.tree.map(lambda a: a.astype(jnp.float64), phi)
        eta = 0.3
        got = jax.jit(lambda t, p: hypergrad.meta_gradient(inner, outer, t, p, eta,
                                                           method="exact"))(theta, phi)["s"]

        @jax.jit  # eagerly every operation compiles alone
        def unrolled(s):
            return outer(hypergrad.virtual_step(inner, theta, {"s": s}, eta))
        h = 1e-5
        want = np.array([(unrolled(phi["s"].at[i].add(h)) - unrolled(phi["s"].at[i].add(-h)))
                         / (2 * h) for i in range(3)])
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_finite_difference_approaches_exact_as_the_inner_loss_becomes_quadratic():
    """L_syn linear in theta makes grad_phi L_syn linear in theta: Eq. 9 is then exact."""
    errors = []
    with enable_x64():
        for alpha in (0.1, 0.01, 0.001, 0.0):
            inner, outer, theta, phi = _mlp_problem(alpha)
            ex = hypergrad.meta_gradient(inner, outer, theta, phi, 0.3, "exact")["s"]
            fd = hypergrad.meta_gradient(inner, outer, theta, phi, 0.3, "finite_difference",
                                         fd_eps=0.5)["s"]
            errors.append(float(jnp.linalg.norm(ex - fd)))
    assert errors[0] > 1e-3  # the large step sees the curvature...
    assert errors == sorted(errors, reverse=True)  # ...less and less as alpha shrinks,
    assert errors[2] < errors[0] / 30
    assert errors[-1] < 1e-10  # and none when grad_phi of the inner loss is linear in theta.


def test_mixed_form_equals_the_generic_exact_hypergradient():
    """The MPS step's reverse-over-forward form, v = grad outer(theta'), equals meta_gradient."""
    inner, outer, theta, phi = _mlp_problem(alpha=0.7)
    eta = 0.2

    def phi_free(t):  # a part of the inner loss that does not depend on phi (CE(real)).
        return jnp.sum(jnp.sin(t["w1"])) + jnp.sum(t["w2"] ** 2)

    full = lambda t, p: phi_free(t) + inner(t, p)  # noqa: E731
    generic = jax.jit(lambda t, p: hypergrad.meta_gradient(full, outer, t, p, eta,
                                                           method="exact"))(theta, phi)
    v = jax.jit(lambda t, p: jax.grad(outer)(hypergrad.virtual_step(full, t, p, eta)))(theta, phi)
    mixed = jax.jit(lambda t, p, v: hypergrad.mixed_hypergradient(inner, t, p, v, eta))(
        theta, phi, v)
    np.testing.assert_allclose(mixed["s"], generic["s"], rtol=1e-4, atol=1e-7)


def test_linearized_form_gives_the_inner_gradient_and_the_mixed_hypergradient():
    """inner_gradient_and_mixed shares one pass: its gradient is grad_theta inner, and its
    function of v is the reverse-over-forward mixed hypergradient for any v."""
    inner, outer, theta, phi = _mlp_problem(alpha=0.7)
    g_theta, hyper = hypergrad.inner_gradient_and_mixed(inner, theta, phi, 0.2)
    want_g = jax.grad(inner)(theta, phi)
    for k in want_g:
        np.testing.assert_allclose(g_theta[k], want_g[k], rtol=1e-6)
    for seed in (0, 1):
        v = jax.tree.map(lambda t: jax.random.normal(jax.random.key(seed), t.shape), theta)
        np.testing.assert_allclose(hyper(v)["s"],
                                   hypergrad.mixed_hypergradient(inner, theta, phi, v, 0.2)["s"],
                                   rtol=1e-5, atol=1e-8)


def test_unknown_method_is_refused():
    inner, outer = quadratic_problem()
    with pytest.raises(ValueError, match="finite_difference"):
        hypergrad.meta_gradient(inner, outer, {"w": jnp.zeros(3)}, {"p": jnp.zeros(2)}, 0.1,
                                method="second_order")


def test_finite_difference_with_bfloat16_parameters_is_evaluated_in_float32():
    """theta +- eps v in bfloat16 rounds the perturbation away (29 % off here before); now
    the two evaluations run in float32 and the result comes back in phi's dtype."""
    inner, outer, theta, phi = _mlp_problem(alpha=0.7)
    bf16 = lambda t: jax.tree.map(lambda a: a.astype(jnp.bfloat16), t)  # noqa: E731
    f32 = lambda t: jax.tree.map(lambda a: a.astype(jnp.float32), t)  # noqa: E731
    want = hypergrad.meta_gradient(inner, outer, f32(bf16(theta)), f32(bf16(phi)), 0.3,
                                   "finite_difference")["s"]
    got = hypergrad.meta_gradient(inner, outer, bf16(theta), bf16(phi), 0.3,
                                  "finite_difference")["s"]
    assert got.dtype == jnp.bfloat16
    err = float(jnp.linalg.norm(got.astype(jnp.float32) - want) / jnp.linalg.norm(want))
    assert err < 0.02


def test_meta_gradient_jits_through_a_closure_and_keeps_float64():
    """alpha = 0: grad_phi inner is linear in theta, so Eq. 9 is exact (see above)."""
    with enable_x64():
        inner, outer, theta, phi = _mlp_problem(alpha=0.0)
        theta = jax.tree.map(lambda a: a.astype(jnp.float64), theta)
        phi = jax.tree.map(lambda a: a.astype(jnp.float64), phi)
        fn = jax.jit(lambda t, q, lr: hypergrad.meta_gradient(inner, outer, t, q, lr,
                                                              "finite_difference"))
        got = fn(theta, phi, 0.3)["s"]
        assert got.dtype == jnp.float64
        want = hypergrad.meta_gradient(inner, outer, theta, phi, 0.3, "exact")["s"]
        np.testing.assert_allclose(got, want, rtol=1e-8)
    inner, outer = quadratic_problem()
    with pytest.raises(ValueError, match="fd_eps"):
        hypergrad.meta_gradient(inner, outer, {"w": jnp.zeros(3)}, {"p": jnp.zeros(2)}, 0.1,
                                "finite_difference", fd_eps=0.0)
