"""The classifier: its TrainState, forward pass, update, the base train step and the eval step.
Pure functions of (state, batch, ...); a config's model, optimiser and schedule are made in
`run/build.py`, the loop is `run/train.py`.
"""
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from mgr_jax import contract, losses


class TrainState(flax.struct.PyTreeNode):
    """Everything a step changes: classifier params, BN statistics, optimiser state.

    `meta` holds what a method adds (finder params and Adam state for MPS methods; an
    auxiliary head for gda_mh); it is an empty dict for `base`.
    """
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    meta: Any


def create_train_state(rng, model, tx, image_size=None, init_variables=None, meta=None):
    """Initialise (or take `init_variables` for) the classifier and its optimiser state.

    model: a `contract.Classifier` or a bare module (then image_size, an int side, (H, W) or
    (H, W, C), gives its input shape). A model without BatchNorm gets batch_stats = {}.
    """
    clf = contract.as_classifier(model, image_size)
    if init_variables is None:
        init_variables = clf.init(rng)
    params, batch_stats = contract.split_variables(init_variables)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), meta=meta if meta is not None else {})


def classifier_forward(model, params, batch_stats, images, train):
    """(logits (N, K), features (N, D), new_batch_stats) of the classifier on normalised
    images (N, H, W, C); stats unchanged in eval (and {} without BatchNorm)."""
    return contract.as_classifier(model).forward(params, batch_stats, images, train)


def apply_classifier_update(state, tx, grads, batch_stats, meta=None):
    """One optimiser step on the classifier; returns the new state (step + 1)."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         batch_stats=batch_stats, opt_state=opt_state,
                         meta=state.meta if meta is None else meta)


def train_step(state, batch, rng, *, model, tx, learning_rate_fn):
    """Base method: one SGD step on CE(real batch). Returns (state, metrics).

    batch: {"image": (N, H, W, C) normalised, "label": (N,) int}.
    """
    del rng  # the base step draws nothing.

    def loss_fn(params):
        logits, _, stats = classifier_forward(model, params, state.batch_stats, batch["image"],
                                              True)
        return losses.cross_entropy(logits, batch["label"]), (logits, stats)

    (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {"loss": loss, "accuracy": 100.0 * jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
               "lr": learning_rate_fn(state.step)}
    return apply_classifier_update(state, tx, grads, stats), metrics


def eval_step(state, batch, *, model):
    """Summed (correct, loss, count) over the real samples of a padded eval batch.

    batch: {"image": (N, H, W, C) normalised, "label": (N,) int, "mask": (N,) 1 for real
    samples, 0 for padding}.
    """
    logits, _, _ = classifier_forward(model, state.params, state.batch_stats, batch["image"],
                                      False)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    nll = -jnp.take_along_axis(logp, batch["label"][:, None], axis=1)[:, 0]
    mask = batch["mask"]
    return {"correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
            "loss": jnp.sum(nll * mask), "count": jnp.sum(mask)}
