"""Hypergradients of one virtual SGD step (Eq. 7-9): exact (second order) and DARTS' FD.

For theta' = theta - eta * grad_theta inner(theta, phi), the hypergradient is
    d outer(theta') / d phi = -eta * (d^2 inner / d phi d theta) v,   v = grad outer(theta').

The functions here take the losses as Python functions, so they are not jitted themselves:
jit a closure over them, e.g.
    jax.jit(lambda th, ph, lr: meta_gradient(inner, outer, th, ph, lr))(theta, phi, 0.1)
`method` must be a Python string (it picks the program); inner_lr and fd_eps may be traced.
"""
import jax
import jax.numpy as jnp
import optax

HYPERGRADIENTS = ("exact", "finite_difference")


def _axpy(a, x, y):
    """a * x + y over matching pytrees."""
    return jax.tree.map(lambda xi, yi: a * xi + yi, x, y)


def _at_least_float32(tree):
    """Floating leaves narrower than float32 (bfloat16, float16) as float32; others as is."""
    def up(x):
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize < 4:
            return x.astype(jnp.float32)
        return x
    return jax.tree.map(up, tree)


def _like(tree, reference):
    """tree's leaves cast to the dtypes of reference's leaves (same structure)."""
    return jax.tree.map(lambda x, r: x.astype(jnp.result_type(r)), tree, reference)


def virtual_step(inner_loss, theta, phi, inner_lr):
    """theta' = theta - inner_lr * grad_theta inner_loss(theta, phi) (plain SGD, Eq. 7)."""
    return _axpy(-inner_lr, jax.grad(inner_loss)(theta, phi), theta)


def meta_gradient(inner_loss, outer_loss, theta, phi, inner_lr, method="exact", fd_eps=0.01):
    """grad_phi of outer_loss(theta - inner_lr * grad_theta inner_loss(theta, phi)).

    inner_loss(theta, phi) -> scalar, outer_loss(theta) -> scalar, both jax-traceable; theta,
    phi pytrees of floating arrays (any shapes); inner_lr a scalar (Python or traced).
    `exact` differentiates through the virtual step (second-order terms included), in the
    dtypes of theta and phi; `finite_difference` is DARTS Eq. 9: with v = grad outer(theta')
    and eps = fd_eps / ||v||,
        -inner_lr * (grad_phi inner(theta + eps v, phi) - grad_phi inner(theta - eps v, phi))
        / (2 eps),
    with theta +- eps v and the two phi-gradients evaluated in at least float32 (in bfloat16
    the perturbation would be rounded away). Returns a pytree shaped like phi, in phi's dtypes.
    """
    _check_method(method, fd_eps)
    if method == "exact":
        return jax.grad(lambda p: outer_loss(virtual_step(inner_loss, theta, p, inner_lr)))(phi)
    v = jax.grad(outer_loss)(virtual_step(inner_loss, theta, phi, inner_lr))
    return finite_difference_hypergradient(inner_loss, theta, phi, v, inner_lr, fd_eps)


def _check_method(method, fd_eps=None):
    if not isinstance(method, str) or method not in HYPERGRADIENTS:
        raise ValueError(f"method={method!r}; choose one of {HYPERGRADIENTS}")
    _check_fd_eps(fd_eps)


def _check_fd_eps(fd_eps):
    if isinstance(fd_eps, (int, float)) and not fd_eps > 0:
        raise ValueError(f"fd_eps={fd_eps!r} must be positive")


def finite_difference_hypergradient(inner_loss, theta, phi, v, inner_lr, fd_eps=0.01):
    """DARTS Eq. 9: -inner_lr * central difference of grad_phi inner along v (pytree like theta).

    theta, phi and v are promoted to at least float32 for the two evaluations; the result
    has phi's structure and dtypes. Float32 inputs are used as they are.
    """
    _check_fd_eps(fd_eps)
    theta32, phi32, v32 = _at_least_float32(theta), _at_least_float32(phi), _at_least_float32(v)
    eps = fd_eps / (optax.tree_utils.tree_norm(v32) + 1e-12)
    grad_phi = jax.grad(inner_loss, argnums=1)
    g_plus = grad_phi(_axpy(eps, v32, theta32), phi32)
    g_minus = grad_phi(_axpy(-eps, v32, theta32), phi32)
    out = jax.tree.map(lambda a, b: -inner_lr * (a - b) / (2 * eps), g_plus, g_minus)
    return _like(out, phi)


def mixed_hypergradient(inner_loss, theta, phi, v, inner_lr):
    """Exact -inner_lr * grad_phi <grad_theta inner(theta, phi), v>, reverse-over-forward.

    Equal to `meta_gradient(..., "exact")` when v = grad outer(theta') (tested), but it never
    differentiates the parts of inner_loss that do not depend on phi twice: jax.jvp gives the
    directional derivative along v, jax.grad its phi-gradient. v: a pytree like theta.
    """
    def directional(p):
        return jax.jvp(lambda t: inner_loss(t, p), (theta,), (v,))[1]
    return jax.tree.map(lambda g: -inner_lr * g, jax.grad(directional)(phi))


def inner_gradient_and_mixed(inner_loss, theta, phi, inner_lr):
    """grad_theta inner(theta, phi) and v -> `mixed_hypergradient(inner_loss, theta, phi, v,
    inner_lr)`, sharing one forward and backward pass (forward-over-reverse, jax.linearize).

    The virtual step needs grad_theta inner; the exact hypergradient is the theta-tangent of
    grad_phi inner along v. Linearising both gradients at (theta, phi) computes the forward
    and backward pass once; the returned function evaluates only the tangent pass, and the
    tangent of grad_theta, which nobody asks for, is dropped by dead-code elimination.
    """
    both = jax.grad(inner_loss, argnums=(0, 1))
    (g_theta, _), tangent = jax.linearize(lambda t: both(t, phi), theta)

    def hypergradient(v):
        return jax.tree.map(lambda g: -inner_lr * g, tangent(v)[1])
    return g_theta, hypergradient
