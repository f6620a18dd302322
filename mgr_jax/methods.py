"""Method registry: what each `config.method` adds to the train state and its step."""
import dataclasses
import functools
from typing import Callable

import jax

from mgr_jax import train


@dataclasses.dataclass(frozen=True)
class Method:
    """A method's pieces: `train_step(state, batch, rng)`, its extra state, its data needs."""
    train_step: Callable
    init_meta: Callable  # rng -> pytree stored in TrainState.meta
    needs_val: bool = False  # whether batches must carry a D_val batch (MPS)


def _with_step_key(step_fn):
    """Give each step its own key: fold the step number into the loop's key (inside jit)."""
    def wrapped(state, batch, rng):
        return step_fn(state, batch, jax.random.fold_in(rng, state.step))
    return wrapped


def build(config, *, model, tx, learning_rate_fn, num_classes, image_size):
    """The Method that `config.method` names."""
    del num_classes, image_size
    if config.method == "base":
        step = functools.partial(train.train_step, model=model, tx=tx,
                                 learning_rate_fn=learning_rate_fn)
        return Method(_with_step_key(step), init_meta=lambda rng: {})
    raise NotImplementedError(config.method)
