"""A config turned into the library's calls: the classifier, its optimiser and schedule, the
method's settings and the method.

The settings dataclasses (`SyntheticSettings`, `MPSSettings`) are the one source of the
method's hyper-parameters: their fields' names, types and defaults, and their checks. This
module only says where each lives in a config (`CONFIG_PATHS`); `config_lib` derives its
schema for those fields from here, and checks their values by making the settings.
"""
import dataclasses

import jax.numpy as jnp
import optax

from mgr_jax import contract, regularisers
from mgr_jax.errors import UserError
from mgr_jax.generators import load_generator
from mgr_jax.method_settings import MPSSettings, require, SyntheticSettings
from mgr_jax.methods import build_method
from mgr_jax.models import resnet


def create_learning_rate_fn(config, steps_per_epoch):
    """Step-wise lr: optimizer.lr, times lr_decay at each epoch in optimizer.lr_milestones."""
    opt = config.optimizer
    boundaries = {int(m) * steps_per_epoch: opt.lr_decay for m in opt.lr_milestones}
    last = max([config.num_epochs * steps_per_epoch, *boundaries])
    if last >= 2 ** 31:  # the step counter is int32
        raise UserError(f"num_epochs={config.num_epochs} or optimizer.lr_milestones="
                        f"{tuple(opt.lr_milestones)} at {steps_per_epoch} steps per epoch "
                        f"make step {last:,}, past the int32 step counter; use fewer epochs")
    return optax.piecewise_constant_schedule(opt.lr, boundaries)


def create_optimizer(config, learning_rate_fn):
    """Nesterov SGD as torch.optim.SGD (dampening 0), weight decay added to the gradient."""
    opt = config.optimizer
    sgd = optax.sgd(learning_rate_fn, momentum=opt.momentum, nesterov=opt.nesterov)
    if opt.weight_decay:
        return optax.chain(optax.add_decayed_weights(opt.weight_decay), sgd)
    return sgd


def create_model(config, num_classes):
    """The config's ResNet (model.*) with `num_classes` logits."""
    return resnet.create_model(config.model.arch, num_classes=num_classes,
                               width=config.model.width, cifar_stem=config.model.cifar_stem,
                               dtype=jnp.dtype(config.model.dtype),
                               remat=config.model.get("remat", False))


def _paths(settings_type, renamed, section=None):
    """{field: config path} of a settings dataclass: `section.field` (or the top-level
    field), unless `renamed` says otherwise."""
    return {f.name: renamed.get(f.name, f"{section}.{f.name}" if section else f.name)
            for f in dataclasses.fields(settings_type) if f.name not in renamed
            or renamed[f.name] is not None}


# settings class -> {field: dotted config path}; fields without a config path (None) are
# the library's only (SyntheticSettings.augment_ops).
CONFIG_PATHS = {
    SyntheticSettings: _paths(SyntheticSettings, {
        "batch_size": "synthetic_batch_size", "augment_num_ops": "augment.num_ops",
        "augment_max_magnitude": "augment.max_magnitude", "uda_temperature": "uda.temperature",
        "uda_threshold": "uda.threshold", "augment_ops": None}),
    MPSSettings: _paths(MPSSettings, {"finder_arch": "finder.arch",
                                      "finder_hidden_dim": "finder.hidden_dim"}, "mps"),
}


# The config sections the settings dataclasses own (a regulariser's section is another).
SECTIONS_OF_SETTINGS = {path.split(".")[0] for paths in CONFIG_PATHS.values()
                        for path in paths.values() if "." in path}


def _get(config, path):
    """The config's value at a dotted path, or None where a section or field is absent."""
    node = config
    for part in path.split("."):
        if node is None or part not in node:
            return None
        node = node[part]
    return node


def settings_from_config(config):
    """(SyntheticSettings, MPSSettings) of a config; SettingError (one line) for a bad value.
    A field or section the config lacks takes the settings' default."""
    made = []
    for settings_type, paths in CONFIG_PATHS.items():
        given = {name: _get(config, path) for name, path in paths.items()}
        made.append(settings_type(**{k: v for k, v in given.items() if v is not None}))
    return tuple(made)


def regulariser_settings(config):
    """The settings of the regulariser `config.method` uses: those it was registered with,
    with the fields its config section (`Regulariser.section`) gives replaced; None for base."""
    entry = regularisers.method_table().get(config.method)
    if entry is None:
        return None
    reg = entry[0]
    given = config.get(reg.section) if reg.section not in SECTIONS_OF_SETTINGS else None
    if not given:
        return reg.settings
    given = given.to_dict() if hasattr(given, "to_dict") else dict(given)
    if isinstance(reg.settings, dict):
        unknown = sorted(set(given) - set(reg.settings))
        require(not unknown, f"config field {reg.section}.{unknown[0] if unknown else ''} is "
                f"not a setting of the regulariser {reg.name}; its settings are "
                f"{sorted(reg.settings)}")
        return {**reg.settings, **given}
    require(dataclasses.is_dataclass(reg.settings),
            f"config section {reg.section} sets the regulariser {reg.name}'s settings, but it "
            "has none (register it with settings=a dataclass instance or a dict)")
    names = {f.name for f in dataclasses.fields(reg.settings)}
    unknown = sorted(set(given) - names)
    require(not unknown, f"config field {reg.section}.{unknown[0] if unknown else ''} is not a "
            f"setting of the regulariser {reg.name}; its settings are {sorted(names)}")
    return dataclasses.replace(reg.settings, **given)


def build(config, *, model, tx, learning_rate_fn, num_classes, image_size=None,
          data_sharding=None, generator=None):
    """The Method that `config.method` names, with its generator (loaded from
    `config.generator` unless a `Generator` is given): `methods.build_method` with the
    settings read from the config (checked by `config_lib.validate`, at the door). model: a
    `contract.Classifier` or a bare module (then `image_size`, an int side or (H, W), gives
    its input size)."""
    syn, mps = settings_from_config(config)
    clf = contract.as_classifier(model, image_size)
    if config.method != "base" and generator is None:
        generator = load_generator(config.generator, num_classes)
    return build_method(config.method, model=clf, tx=tx, learning_rate_fn=learning_rate_fn,
                        num_classes=num_classes, generator=generator, synthetic=syn, mps=mps,
                        regulariser_settings=regulariser_settings(config),
                        data_sharding=data_sharding)
