"""Flax NNX classifiers under the classifier contract: Linen's init/apply over nnx.split/merge.

An NNX module holds its weights; the steps carry them as pure pytrees. `NNXModule` splits the
module once into its graph (static) and its state, and maps the state to Linen's collections:

    nnx.Param     -> variables["params"]
    nnx.BatchStat -> variables["batch_stats"]

as nested dicts of arrays keyed by attribute name (list indices as strings, like Linen's
names). `apply` merges a fresh module from the graph and the variables it is given on every
call: a pure function that jit and grad trace like a Linen module's. train=True switches every
layer with a `use_running_average` attribute (nnx.BatchNorm) to batch statistics, train=False
to the running ones, whatever the module was built with. Any other state (nnx.Rngs kept for
nnx.Dropout, Variables of other types, plain arrays) is refused: the contract has no PRNG keys
and no other collection.

    clf = nnx_classifier.from_nnx(MyCNN(rngs=nnx.Rngs(0)), input_shape=(32, 32, 3))
    clf = nnx_classifier.from_nnx(lambda rngs: MyCNN(rngs=rngs), input_shape=(32, 32, 3))

The first starts from the instance's weights, the second draws new ones from init's key.
Importing this module also lets `contract.as_classifier` take an nnx.Module as it is.
"""
import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util

from mgr_jax import contract

COLLECTIONS = {"params": nnx.Param, "batch_stats": nnx.BatchStat}


@dataclasses.dataclass(frozen=True, eq=False)
class NNXModule:
    """Linen's `init` and `apply` for an NNX module (build it with `adapt` or `from_nnx`).

    graphdef: the module's static structure (nnx.split).
    paths: {collection: {path of str keys: the path in the module}}, one entry per leaf.
    weights: the variables of the instance it was built from; None when built from a factory.
    factory: rngs -> module, called by `init`; None when built from an instance.
    dtype: None (compute as built), or the dtype set on every layer's `dtype` attribute
        (`clone(dtype=...)`, what `Classifier.in_float32` asks for).
    """
    graphdef: Any = dataclasses.field(repr=False)
    paths: Mapping = dataclasses.field(repr=False)
    weights: Any = dataclasses.field(default=None, repr=False)
    factory: Optional[Callable] = None
    dtype: Any = None

    def init(self, rng, images=None, train=False):
        """The variables: a new module from factory(nnx.Rngs(rng)), or the instance's
        (copied, so that a donated train state leaves the instance's arrays alone)."""
        del images, train  # an NNX module is built with its shapes; nothing to trace.
        if self.factory is None:
            return jax.tree.map(lambda x: jnp.array(x, copy=True), self.weights)
        _, variables, paths = _split(self.factory(nnx.Rngs(rng)))
        if paths != self.paths:
            raise contract.ContractError("the NNX factory built modules of different structures "
                                         "from two keys: build the same layers for every key")
        return variables

    def merge(self, variables, train=False):
        """A new nnx.Module holding `variables` ({"params", "batch_stats"} as init returns),
        in train (batch statistics) or eval mode: e.g. the trained model, back in NNX."""
        module = nnx.merge(self.graphdef, *[self._state(variables, c) for c in COLLECTIONS])
        module.set_attributes(use_running_average=not train, raise_if_not_found=False)
        if self.dtype is not None:
            module.set_attributes(dtype=self.dtype, raise_if_not_found=False)
        return module

    def apply(self, variables, images, train=False, mutable=False):
        """The module's output on images; with mutable (["batch_stats"]) also
        {"batch_stats": the running statistics after the call}, as Linen's apply. A fresh
        module each call: the variables given are never changed."""
        module = self.merge(variables, train)
        out = module(images)
        if not mutable:
            return out
        return out, {"batch_stats": _variables(nnx.state(module, nnx.BatchStat))}

    def clone(self, *, dtype):
        """The same module computing in `dtype` (every layer's `dtype` attribute)."""
        return dataclasses.replace(self, dtype=dtype)

    def _state(self, variables, collection):
        """variables[collection] keyed as the module's state, its leaves checked by path."""
        want = self.paths.get(collection, {})
        got = traverse_util.flatten_dict(variables.get(collection, {}))
        if set(got) != set(want):
            missing = sorted("/".join(p) for p in set(want) - set(got))
            extra = sorted("/".join(p) for p in set(got) - set(want))
            raise contract.ContractError(
                f"variables[{collection!r}] do not match the NNX module (missing {missing[:3]}, "
                f"unexpected {extra[:3]}): pass the variables its init returned")
        return traverse_util.unflatten_dict({want[p]: v for p, v in got.items()})


def _variables(state):
    """An nnx.State -> a nested dict of arrays with str keys."""
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    return traverse_util.unflatten_dict({tuple(map(str, p)): v for p, v in flat.items()})


def _split(module):
    """(graphdef, Linen-like variables, paths) of a module; refuses state the contract cannot
    carry."""
    graphdef, *states, rest = nnx.split(module, *COLLECTIONS.values(), ...)
    other = [(".".join(map(str, p)), type(v).__name__) for p, v in nnx.to_flat_state(rest)]
    if other:
        listed = ", ".join(f"{p} ({kind})" for p, kind in other[:4])
        raise contract.ContractError(
            f"the NNX module holds state other than nnx.Param and nnx.BatchStat: {listed}"
            f"{' ...' if len(other) > 4 else ''}; the contract carries only params and "
            "batch_stats: build it without (no rngs for nnx.Dropout: dropout is not supported; "
            "a constant as a Python value or computed in __call__)")
    variables, paths = {}, {}
    for name, state in zip(COLLECTIONS, states):
        flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
        paths[name] = {tuple(map(str, p)): p for p in flat}
        if flat or name == "params":
            variables[name] = _variables(state)
    return graphdef, variables, paths


def adapt(module_or_factory):
    """An `NNXModule` for an nnx.Module instance, or for a factory rngs -> nnx.Module (read
    from an abstract module: nothing is initialised until `init`)."""
    if isinstance(module_or_factory, nnx.Module):
        graphdef, variables, paths = _split(module_or_factory)
        return NNXModule(graphdef, paths, weights=variables)
    if callable(getattr(module_or_factory, "init", None)):
        raise contract.ContractError(
            f"{type(module_or_factory).__name__} has Linen's init and apply: pass it to "
            "contract.Classifier, not from_nnx")
    if not callable(module_or_factory):
        raise contract.ContractError(f"from_nnx takes an nnx.Module or a function rngs -> "
                                     f"nnx.Module, not a {type(module_or_factory).__name__}")
    abstract = nnx.eval_shape(lambda: module_or_factory(nnx.Rngs(0)))
    if not isinstance(abstract, nnx.Module):
        raise contract.ContractError(f"the NNX factory returned a {type(abstract).__name__}: "
                                     "it must return an nnx.Module built with the rngs given")
    graphdef, _, paths = _split(abstract)
    return NNXModule(graphdef, paths, factory=module_or_factory)


def from_nnx(module_or_factory, input_shape=None, **classifier_kwargs):
    """A `contract.Classifier` for an NNX module or factory rngs -> module.

    input_shape: (H, W, C) of one image (as `Classifier`); classifier_kwargs: the other
    fields of `Classifier` (normalize, outputs, compute_dtype). The module is called as
    module(images) and returns (logits, features) unless `outputs` maps its output; the mode
    is the adapter's, so train_kwarg can only be "train".
    """
    if classifier_kwargs.pop("train_kwarg", "train") != "train":
        raise contract.ContractError("from_nnx switches BatchNorm itself (train=...): leave "
                                     "train_kwarg out")
    return contract.Classifier(adapt(module_or_factory), input_shape=input_shape,
                               train_kwarg="train", **classifier_kwargs)


contract.register_wrapper("flax.nnx", lambda model: isinstance(model, nnx.Module),
                          lambda model, input_shape: from_nnx(model, input_shape))
