"""The base and uniform-sampling steps: CE on the real batch, plus lambda * L_syn on
synthetic images x_p = G(z, y_p) with z ~ N(0, I) (gda, gda_mh, gda_ssl, pcr, and any registered
regulariser). `UniformContext` is what they need; `methods.build_method` makes it. The MPS
steps (`mgr_jax.mps`) reuse the real-batch pieces and `uniform_update`.
"""
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mgr_jax import classifier, losses, regularisers
from mgr_jax import synthetic as synthetic_lib
from mgr_jax.method_settings import SyntheticSettings


@dataclasses.dataclass(frozen=True)
class UniformContext:
    """What a step with a synthetic loss needs (every method but base): the classifier and
    its optimiser, the generator, the regulariser with its settings, the device layout."""
    model: Any  # the contract.Classifier
    tx: Any
    learning_rate_fn: Callable
    generator: Any
    regulariser: regularisers.Regulariser
    synthetic: SyntheticSettings
    num_classes: int
    settings: Any = None  # the regulariser's own settings
    head: Any = None  # the regulariser's extra head (a Flax module), if it has one
    data_sharding: Any = None

    @property
    def lam(self):
        return float(self.synthetic.lambda_)

    def syn_loss(self, params, batch_stats, x01, y, key, head=None, model=None):
        """L_syn (unweighted) of the images x01 at `params`; model: another classifier to
        evaluate it with (the finite-difference twin), default the context's."""
        net = self.model if model is None else model
        inputs = regularisers.LossInputs(
            forward=lambda images: synthetic_lib.train_mode_outputs(net, params, batch_stats,
                                                                   images),
            images=x01, labels=y, key=key, strong=regularisers.strong_augment(self.synthetic),
            head=head, settings=self.settings, synthetic=self.synthetic)
        return self.regulariser.loss(inputs)

    def draw(self, rng):
        """(z, y_p, augmentation key) of a step's key; z and y_p split over the devices like
        the real batch (no-op on one device)."""
        k_lat, k_aug = jax.random.split(rng)
        z, y = synthetic_lib.draw_latents(k_lat, self.generator, self.synthetic.batch_size,
                                          self.num_classes)
        if self.data_sharding is not None:
            z, y = jax.lax.with_sharding_constraint((z, y), self.data_sharding)
        return z, y, k_aug

    def synthesize(self, gen_params, w, y):
        """x_p in [0, 1] at the classifier's (H, W) and channel count."""
        shape = self.model.input_shape
        return synthetic_lib.synthesize(self.generator, gen_params, w, y, shape[:2],
                                        channels=shape[2])


def real_ce(model, state, batch):
    """CE on the real batch as a function of params -> (loss, (logits, new batch stats))."""
    def fn(params):
        logits, _, stats = classifier.classifier_forward(model, params, state.batch_stats,
                                                         batch["image"], True)
        return losses.cross_entropy(logits, batch["label"]), (logits, stats)
    return fn


def val_ce(model, state, batch):
    """CE on the D_val batch at theta' (train-mode BN on that batch; its stats are dropped)."""
    def fn(params):
        logits, _, _ = classifier.classifier_forward(model, params, state.batch_stats,
                                                     batch["val_image"], True)
        return losses.cross_entropy(logits, batch["val_label"])
    return fn


def accuracy(logits, labels):
    return 100.0 * jnp.mean(jnp.argmax(logits, -1) == labels)


def base_step(state, batch, rng, frozen, *, model, tx, learning_rate_fn):
    """CE on the real batch only."""
    del frozen
    return classifier.train_step(state, batch, rng, model=model, tx=tx,
                                 learning_rate_fn=learning_rate_fn)


def uniform_step(state, batch, rng, frozen, *, ctx):
    """GDA, GDA multi-head, GDA+SSL, PCR (any registered regulariser):
    CE(real) + lambda * L_syn(x_p), z ~ N(0, I)."""
    z, y, k_aug = ctx.draw(rng)
    return uniform_update(state, batch, ctx, frozen["generator"], z, y, k_aug)


def uniform_update(state, batch, ctx, gen_params, w, y, k_aug):
    """The classifier's step on CE(real) + lambda * L_syn(x_p), x_p = G(w, y) held fixed."""
    x01 = jax.lax.stop_gradient(ctx.synthesize(gen_params, w, y))
    head_params = state.meta.get("aux_head")

    def loss_fn(params, head_params):
        ce, (logits, stats) = real_ce(ctx.model, state, batch)(params)
        head = None
        if head_params is not None:
            head = lambda f: ctx.head.apply(head_params, f)  # noqa: E731
        syn = ctx.syn_loss(params, state.batch_stats, x01, y, k_aug, head=head)
        return ce + ctx.lam * syn, (ce, syn, logits, stats)

    (loss, (ce, syn, logits, stats)), (grads, head_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(state.params, head_params)
    meta = state.meta
    if head_params is not None:  # the extra head learns with the classifier's optimiser.
        upd, head_opt = ctx.tx.update(head_grads, meta["aux_opt"], head_params)
        meta = {"aux_head": optax.apply_updates(head_params, upd), "aux_opt": head_opt}
    metrics = {"loss": loss, "ce": ce, "syn": syn, "accuracy": accuracy(logits, batch["label"]),
               "lr": ctx.learning_rate_fn(state.step)}
    return classifier.apply_classifier_update(state, ctx.tx, grads, stats, meta), metrics
