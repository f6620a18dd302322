"""mgr-jax: Meta Generative Regularization (NeurIPS 2023) in JAX and Flax, as a library.

The public names are these (docs/api.md gives each one's signature and contract):

    from mgr_jax import Classifier, build_method, SyntheticSettings, MPSSettings

Each is loaded on first use, so `import mgr_jax` (and the data layer's worker processes,
which import `mgr_jax.data`) stays cheap. The run wing (`mgr_jax.run`: configs, the training
loop, checkpoints) is not part of this surface; `python -m mgr_jax.main` runs it.
"""
import importlib

# public name -> (module, attribute)
_PUBLIC = {
    # the classifier contract
    "Classifier": ("contract", "Classifier"),
    "ContractError": ("contract", "ContractError"),
    "as_classifier": ("contract", "as_classifier"),
    "imagenet_normalize": ("contract", "imagenet_normalize"),
    "from_nnx": ("nnx_classifier", "from_nnx"),
    # methods and their settings
    "Method": ("methods", "Method"),
    "build_method": ("methods", "build_method"),
    "method_names": ("methods", "method_names"),
    "SyntheticSettings": ("method_settings", "SyntheticSettings"),
    "MPSSettings": ("method_settings", "MPSSettings"),
    "SettingError": ("method_settings", "SettingError"),
    # regularisers: the unit of extension
    "Regulariser": ("regularisers", "Regulariser"),
    "LossInputs": ("regularisers", "LossInputs"),
    "register_regulariser": ("regularisers", "register"),
    # the classifier's state and passes
    "TrainState": ("classifier", "TrainState"),
    "create_train_state": ("classifier", "create_train_state"),
    "classifier_forward": ("classifier", "classifier_forward"),
    "eval_step": ("classifier", "eval_step"),
    # generators, synthetic samples, the finder
    "Generator": ("generators.base", "Generator"),
    "draw_latents": ("synthetic", "draw_latents"),
    "synthesize": ("synthetic", "synthesize"),
    "rand_augment": ("synthetic_augment", "rand_augment"),
    "Finder": ("finder", "Finder"),
    # the paper's losses and hypergradient
    "cross_entropy": ("losses", "cross_entropy"),
    "pcr_loss": ("losses", "pcr_loss"),
    "kl_penalty": ("losses", "kl_penalty"),
    "uda_loss": ("losses", "uda_loss"),
    "meta_gradient": ("hypergrad", "meta_gradient"),
    # errors
    "UserError": ("errors", "UserError"),
}

__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mgr_jax' has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    value = getattr(importlib.import_module(f"mgr_jax.{module}"), attribute)
    globals()[name] = value  # found directly from now on
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
