"""The classifier contract: what `methods`, `synthetic` and `classifier` need of a Flax model.

A classifier f = h o g is any Flax module that, applied to a batch of input images, returns
its logits and its features:

    module.apply(variables, images, train=train)            -> (logits, features)
    module.apply(variables, images, train=True, mutable=["batch_stats"])
                                                             -> ((logits, features), updates)

  - images: (N, H, W, C) float, already normalised by `Classifier.normalize` (below);
  - logits: (N, num_classes), the output of the head h;
  - features: (N, D), g(x), one vector per sample (pooled: not a feature map). PCR compares
    these, and `gda_mh`'s second head is a Dense(num_classes) on them; D is read from their
    shape, never from a layer name;
  - variables: {"params": ...} for a model without BatchNorm, {"params": ..., "batch_stats":
    ...} with it (flax.linen.BatchNorm's collection); no other collection is supported;
  - train: the keyword that switches BatchNorm to batch statistics (`train_kwarg`; None for a
    model that takes no such keyword). No PRNG keys are passed: dropout is not supported.

`Classifier` wraps such a module with what the steps cannot guess: the input shape (H, W, C)
(any size and channel count: synthetic images are resized to (H, W) and their channels
mapped to C, see `synthetic.match_channels`), the one input normalisation applied to real
and synthetic images alike, and how to read (logits, features) from the module's output when
it is not that tuple. A bare module passed where a `Classifier` is expected is wrapped with
the defaults below (the contract of `converters.torchvision_resnet` and `models.resnet`).

A Flax NNX module (flax.nnx.Module) follows the same contract through `nnx_classifier`: its
`from_nnx(module or rngs -> module, input_shape)` gives a Classifier whose module offers the
init/apply above over nnx.split/merge (nnx.Param as "params", nnx.BatchStat as "batch_stats"),
and importing it lets `as_classifier` take an nnx.Module as it is (`register_wrapper`).
"""
import dataclasses
import operator
from collections.abc import Mapping
from typing import Any, Callable, Optional, Protocol, Tuple

import jax
import jax.numpy as jnp

from mgr_jax.data import protocol
from mgr_jax.errors import UserError


class ContractError(UserError, ValueError):
    """A model, its outputs or a batch that do not follow the classifier contract."""


class ClassifierModule(Protocol):
    """What a Flax module must offer (flax.linen.Module does): `init` and `apply` as above."""

    def init(self, rngs: Any, images: jax.Array, **kwargs: Any) -> Any: ...

    def apply(self, variables: Any, images: jax.Array, **kwargs: Any) -> Any: ...


def imagenet_normalize(images01):
    """[0, 1] RGB (..., 3) -> (x - mean) / std with torchvision's ImageNet statistics: the
    pipelines' normalisation (`data.protocol.normalize`), the default of `Classifier`."""
    return protocol.normalize(images01)


def input_shape_of(image_size, channels=3):
    """(H, W, C) from an int side (square), an (H, W) pair or an (H, W, C) triple."""
    try:
        side = operator.index(image_size)
        shape = (side, side, channels)
    except TypeError:
        try:
            shape = tuple(operator.index(s) for s in image_size)
        except TypeError:
            shape = ()
        shape = shape + (channels,) if len(shape) == 2 else shape
    if len(shape) != 3 or not all(s >= 1 for s in shape):
        raise ContractError(f"input shape {image_size!r} is not valid: give an int side, "
                            "(H, W) or (H, W, C) with positive sizes")
    return shape


def _default_outputs(out):
    """(logits, features) from a (logits, features) pair or a {"logits", "features"} dict."""
    if isinstance(out, Mapping) and "logits" in out and "features" in out:
        return out["logits"], out["features"]
    if isinstance(out, (tuple, list)) and len(out) == 2:
        return out[0], out[1]
    kind = type(out).__name__
    raise ContractError(
        f"the classifier returned a {kind}, not (logits, features): return the pooled "
        "features g(x) (N, D) beside the logits, or pass Classifier(outputs=fn) mapping the "
        "module's output to (logits, features)")


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A Flax classifier module and what the MGR steps need to know about it.

    module: the flax.linen.Module (see the module docstring for its `apply`).
    input_shape: (H, W, C) of one input image; None only for forward passes (init and the
        method builders need it).
    normalize: [0, 1] images (N, H, W, C) -> the module's input, jnp-traceable. Synthetic
        images go through it inside the steps; real batches must be given already normalised
        by the same function (`prepare`). Default: ImageNet statistics (3 channels only);
        None: the module takes [0, 1] images as they are.
    train_kwarg: name of the keyword switching train / eval mode; None if the module has none.
    outputs: module output -> (logits, features); default: a (logits, features) pair or a
        dict with those keys.
    compute_dtype: the dtype the module computes in; None: its `dtype` field if it has one,
        else float32. A finite-difference hypergradient is evaluated in float32 when this is
        narrower (see `methods.build_method`).
    """
    module: Any
    input_shape: Optional[Tuple[int, int, int]] = None
    normalize: Optional[Callable] = imagenet_normalize
    train_kwarg: Optional[str] = "train"
    outputs: Optional[Callable] = None
    compute_dtype: Any = None

    def __post_init__(self):
        if not (callable(getattr(self.module, "init", None))
                and callable(getattr(self.module, "apply", None))):
            raise ContractError(f"Classifier(module={type(self.module).__name__}): the module "
                                "needs Flax's init and apply (a flax.linen.Module); a "
                                "flax.nnx.Module goes through mgr_jax.nnx_classifier (from_nnx, "
                                "or import it before passing the module)")
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", input_shape_of(self.input_shape))
            if self.normalize is imagenet_normalize and self.input_shape[-1] != 3:
                raise ContractError(
                    f"Classifier(input_shape={self.input_shape}): the default ImageNet "
                    "normalisation needs 3 channels; pass normalize=None (the model takes "
                    "[0, 1] images) or normalize=your_function")
        if self.normalize is not None and not callable(self.normalize):
            raise ContractError(f"Classifier(normalize={self.normalize!r}) must be a function "
                                "of [0, 1] images, or None")
        if self.compute_dtype is None:
            own = getattr(self.module, "dtype", None) if _has_field(self.module, "dtype") else None
            object.__setattr__(self, "compute_dtype", jnp.dtype(own or jnp.float32))
        else:
            object.__setattr__(self, "compute_dtype", jnp.dtype(self.compute_dtype))

    @property
    def channels(self):
        return self.input_shape[-1]

    def prepare(self, images01):
        """[0, 1] images (N, H, W, C) -> the module's input (the one normalisation)."""
        return images01 if self.normalize is None else self.normalize(images01)

    def _mode(self, train):
        return {} if self.train_kwarg is None else {self.train_kwarg: train}

    def init(self, rng):
        """The module's variables, initialised on zeros of (1, *input_shape) in eval mode."""
        if self.input_shape is None:
            raise ContractError("Classifier.init needs input_shape=(H, W, C)")
        # Jitted: one program (kept by the persistent compilation cache) instead of one small
        # compile per operation, which costs a ResNet-10 about 15 s on 2 CPU cores.
        variables = jax.jit(lambda key: self.module.init(
            key, jnp.zeros((1,) + self.input_shape), **self._mode(False)))(rng)
        split_variables(variables)  # refuses collections the steps cannot carry.
        return variables

    def forward(self, params, batch_stats, images, train):
        """(logits (N, K), features (N, D), new batch_stats); images (N, H, W, C) normalised.

        train=True uses batch statistics and returns their running-statistic update (the
        same, empty, dict for a model without BatchNorm); train=False uses the running ones.
        """
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
        if train and batch_stats:
            out, upd = self.module.apply(variables, images, mutable=["batch_stats"],
                                         **self._mode(True))
            new_stats = upd["batch_stats"]
        else:
            out, new_stats = self.module.apply(variables, images, **self._mode(train)), batch_stats
        logits, features = (self.outputs or _default_outputs)(out)
        check_outputs(logits, features, images.shape[0])
        return logits, features, new_stats

    def output_shapes(self, variables=None):
        """Abstract (logits, features) of a batch of two (jax.eval_shape: nothing computed)."""
        if self.input_shape is None:
            raise ContractError("Classifier.output_shapes needs input_shape=(H, W, C)")

        def run():
            v = self.init(jax.random.key(0)) if variables is None else variables
            params, stats = split_variables(v)
            return self.forward(params, stats, jnp.zeros((2,) + self.input_shape), True)[:2]
        return jax.eval_shape(run)

    def in_float32(self):
        """The same classifier computing in float32 (module.clone(dtype=float32)), itself when
        it already does, or None when the module has no `dtype` field to change."""
        if jnp.dtype(self.compute_dtype).itemsize >= 4:
            return self
        if not _has_field(self.module, "dtype"):
            return None
        return dataclasses.replace(self, module=self.module.clone(dtype=jnp.float32),
                                   compute_dtype=jnp.float32)


def _has_field(module, name):
    return dataclasses.is_dataclass(module) and any(
        f.name == name for f in dataclasses.fields(module))


def split_variables(variables):
    """(params, batch_stats) of a model's variables; batch_stats is {} without BatchNorm."""
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ContractError("a classifier's variables must be a dict with 'params' (and "
                            "'batch_stats' with BatchNorm)")
    other = sorted(set(variables) - {"params", "batch_stats"})
    if other:
        raise ContractError(f"the classifier has variable collections {other}: only 'params' "
                            "and 'batch_stats' (BatchNorm) are supported")
    return variables["params"], variables.get("batch_stats", {})


def check_outputs(logits, features, batch):
    """Trace-time check of the contract's outputs: logits (N, K), features (N, D)."""
    for name, value in (("logits", logits), ("features", features)):
        shape = getattr(value, "shape", None)
        if shape is None or len(shape) != 2 or shape[0] != batch:
            raise ContractError(
                f"the classifier's {name} have shape {shape} for a batch of {batch}; the "
                f"contract is {name} ({batch}, {'K' if name == 'logits' else 'D'})"
                + ("" if name == "logits" else ": pool feature maps (e.g. mean over H, W) "
                   "before returning them"))


# Model kinds without Linen's init/apply, wrapped by the module that knows them (it imports
# this one and registers itself: `nnx_classifier` for flax.nnx). name -> (accepts, wrap).
_WRAPPERS = {}


def register_wrapper(name, accepts, wrap):
    """Let `as_classifier` take models of another kind: for a model with accepts(model),
    wrap(model, input_shape or None) -> Classifier."""
    _WRAPPERS[name] = (accepts, wrap)


def as_classifier(model, image_size=None):
    """A `Classifier` for `model`: itself if it is one, else the module with the defaults
    (train=..., (logits, features), ImageNet normalisation). image_size: int, (H, W) or
    (H, W, C), checked against a Classifier's own input_shape."""
    if isinstance(model, Classifier):
        if image_size is None or model.input_shape is None:
            if image_size is not None:
                return dataclasses.replace(model, input_shape=image_size)
            return model
        want = input_shape_of(image_size, model.input_shape[-1])
        if want != model.input_shape:
            raise ContractError(f"image_size {image_size!r} does not match the classifier's "
                                f"input_shape {model.input_shape}")
        return model
    shape = None if image_size is None else input_shape_of(image_size)
    for accepts, wrap in _WRAPPERS.values():
        if accepts(model):
            return wrap(model, shape)
    return Classifier(model, shape)


def check_batch(batch, classifier, with_val):
    """Trace-time check of a train batch: {"image": (N, H, W, C) normalised, "label": (N,)
    int}, plus {"val_image", "val_label"} (a D_val batch, same form) when with_val."""
    pairs = [("image", "label")] + ([("val_image", "val_label")] if with_val else [])
    missing = [k for pair in pairs for k in pair if k not in batch]
    if missing:
        raise ContractError(
            f"the batch has no {missing}: a train batch is {{'image': (N, H, W, C) normalised, "
            "'label': (N,) int}" + (", plus 'val_image' and 'val_label' (a D_val batch) for "
                                    "the MPS methods" if with_val else ""))
    for image_key, label_key in pairs:
        shape = tuple(jnp.shape(batch[image_key]))
        if classifier.input_shape is not None and shape[1:] != classifier.input_shape:
            raise ContractError(f"batch[{image_key!r}] has shape {shape}; the classifier takes "
                                f"(N, *{classifier.input_shape})")
        if tuple(jnp.shape(batch[label_key])) != shape[:1]:
            raise ContractError(f"batch[{label_key!r}] has shape {jnp.shape(batch[label_key])};"
                                f" it must be ({shape[0]},) integer class indices")
