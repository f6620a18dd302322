"""The synthetic-sample regularisers L_syn, one registered object each.

A `Regulariser` is what a method adds to CE on the real batch: a loss on the classifier's
outputs for the synthetic images x_p, its own settings, and, if it needs one, an extra head
trained beside the classifier (gda_mh's second head). It names the methods it makes: with
latents drawn uniformly (z ~ N(0, I)) and, optionally, with the meta-learned finder (MPS,
Algorithm 1). The paper's four are registered here:

    regulariser   uniform method   MPS method   loss
    gda           gda              gda_mps      CE(h(g(x_p)), y_p)
    gda_mh        gda_mh           -            CE(h'(g(x_p)), y_p), h' a second head
    gda_ssl       gda_ssl          -            UDA consistency of h(g(T(x_p))) to h(g(x_p))
    pcr           pcr              mgr          PCR: ||g(T(x_p)) - g(x_p)||^2 (Eq. 5-6)

A new one is a module of its own and one call, from inside the package or outside it:

    def my_loss(inputs):                 # inputs: LossInputs
        _, features = inputs.forward(inputs.images)
        return jnp.mean(jnp.square(features))
    regularisers.register(Regulariser("my_reg", my_loss, uniform="my_reg", mps="my_reg_mps"))

after which `methods.build_method("my_reg", ...)` and a config with `method="my_reg"` train
with it. `settings` (a frozen dataclass instance, or None) is handed to the loss as
`inputs.settings`; the config path reads overrides of its fields from the config section
`config_section` (default: the regulariser's name) when the config has one.
"""
import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax

from mgr_jax import losses, synthetic_augment


@dataclasses.dataclass(frozen=True)
class LossInputs:
    """What a regulariser's loss sees at one step (all traced, inside the jitted step).

    forward: images in [0, 1] (N, H, W, C) -> (logits (N, K), features (N, D)): the
        classifier in train mode at the parameters being differentiated (batch statistics;
        their updates are dropped: running statistics follow the real data only).
    images: x_p in [0, 1]; labels: y_p (N,) int; key: a PRNG key of the step's own.
    strong: (images, key) -> T(images), the method's differentiable RandAugment.
    head: features -> logits of the regulariser's extra head (None without one).
    settings: the regulariser's own settings; synthetic: the `SyntheticSettings`.
    """
    forward: Callable
    images: jax.Array
    labels: jax.Array
    key: jax.Array
    strong: Callable
    head: Optional[Callable] = None
    settings: Any = None
    synthetic: Any = None


@dataclasses.dataclass(frozen=True)
class Regulariser:
    """A synthetic-sample loss and the methods it makes (module docstring).

    name: the registry's key. loss: LossInputs -> scalar (unweighted; the method multiplies
    it by lambda). uniform / mps: the names of its methods with uniform latents and with MPS
    (None: no such method). settings: its own settings (a frozen dataclass instance) or None.
    head: num_classes -> a Flax module mapping features (N, D) to logits, initialised per run
    and trained with the classifier's optimiser (None: no extra state).
    """
    name: str
    loss: Callable
    uniform: Optional[str] = None
    mps: Optional[str] = None
    settings: Any = None
    config_section: Optional[str] = None
    head: Optional[Callable] = None

    @property
    def section(self):
        """The config section holding overrides of `settings`' fields."""
        return self.config_section or self.name


_REGISTRY = {}


def register(regulariser, *, replace=False):
    """Adds a Regulariser (and its methods) to the registry; returns it. A name or method
    name already taken raises ValueError unless `replace` (same regulariser name)."""
    if not isinstance(regulariser, Regulariser):
        raise TypeError(f"register() takes a Regulariser, not {type(regulariser).__name__}")
    if not callable(regulariser.loss):
        raise TypeError(f"Regulariser {regulariser.name!r}: loss must be a function of LossInputs")
    others = {k: r for k, r in _REGISTRY.items() if k != regulariser.name or not replace}
    if regulariser.name in others:
        raise ValueError(f"a regulariser named {regulariser.name!r} is registered; pass "
                         "replace=True to replace it")
    taken = {"base"} | {m for r in others.values() for m in (r.uniform, r.mps) if m}
    for method in (regulariser.uniform, regulariser.mps):
        if method in taken:
            raise ValueError(f"Regulariser {regulariser.name!r}: method name {method!r} is "
                             "taken; choose another")
    if regulariser.uniform is None and regulariser.mps is None:
        raise ValueError(f"Regulariser {regulariser.name!r} names no method: give uniform= "
                         "and/or mps=")
    _REGISTRY[regulariser.name] = regulariser
    return regulariser


def unregister(name):
    """Removes a regulariser registered from outside (tests, notebooks)."""
    _REGISTRY.pop(name, None)


def registered():
    """{name: Regulariser}, in registration order."""
    return dict(_REGISTRY)


def method_table():
    """{method name: (Regulariser, "uniform" | "mps")} of every registered method."""
    table = {}
    for reg in _REGISTRY.values():
        for sampling in ("uniform", "mps"):
            if getattr(reg, sampling):
                table[getattr(reg, sampling)] = (reg, sampling)
    return table


def strong_augment(synthetic):
    """(images, key) -> T(images): the RandAugment T of these SyntheticSettings."""
    aug = {"num_ops": synthetic.augment_num_ops, "max_magnitude": synthetic.augment_max_magnitude}
    if tuple(synthetic.augment_ops) != synthetic_augment.OPS:
        aug["ops"] = synthetic.augment_ops
    return lambda images, key: synthetic_augment.rand_augment(key, images, **aug)


# ------------------------------------------------------------------ the paper's four


def gda_loss(inputs):
    """GDA: the synthetic samples as extra labelled data, CE(h(g(x_p)), y_p)."""
    logits, _ = inputs.forward(inputs.images)
    return losses.cross_entropy(logits, inputs.labels)


def gda_mh_loss(inputs):
    """GDA multi-head: CE of a second head on the shared features g(x_p)."""
    _, features = inputs.forward(inputs.images)
    return losses.multi_head_gda_loss(inputs.head(features), inputs.labels)


def gda_ssl_loss(inputs):
    """GDA+SSL: UDA consistency of the strongly augmented x_p to the sharpened prediction."""
    weak, _ = inputs.forward(inputs.images)
    strong, _ = inputs.forward(inputs.strong(inputs.images, inputs.key))
    syn = inputs.synthetic
    return losses.uda_loss(weak, strong, temperature=syn.uda_temperature,
                           threshold=syn.uda_threshold)


def pcr_loss(inputs):
    """PCR (Eq. 5-6): the features of T(x_p) and of x_p pulled together (squared distance)."""
    _, features = inputs.forward(inputs.images)
    _, features_aug = inputs.forward(inputs.strong(inputs.images, inputs.key))
    return losses.pcr_loss(features_aug, features)


register(Regulariser("gda", gda_loss, uniform="gda", mps="gda_mps"))
register(Regulariser("gda_mh", gda_mh_loss, uniform="gda_mh", head=nn.Dense))
register(Regulariser("gda_ssl", gda_ssl_loss, uniform="gda_ssl"))
register(Regulariser("pcr", pcr_loss, uniform="pcr", mps="mgr"))
