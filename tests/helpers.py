"""Small configs that keep the end-to-end tests fast on a 2-core CPU."""
import functools
import os

import numpy as np

from configs import default
from mgr_jax import files
from mgr_jax.experiments import runs
from mgr_jax.models import resnet


def xla_flags(*more):
    """XLA_FLAGS for a test's subprocess: the suite's own (conftest.py) and `more`."""
    return " ".join([os.environ.get("XLA_FLAGS", ""), *more]).strip()


def tiny_config(**overrides):
    """The default config shrunk: base, ResNet-10 at width 1/8 on 8x8 inputs, one augmentation
    op, 30 % of D, 2 epochs."""
    config = default.get_config()
    config.method = "base"
    config.generator.kind = "random"
    config.generator.resolution = 8
    config.num_epochs = 2
    config.batch_size = 32
    config.synthetic_batch_size = 16
    config.eval_batch_size = 128
    config.data.image_size = 8
    config.data.subset_fraction = 0.3
    config.model.arch = "resnet10"
    config.model.width = 0.125
    config.augment.num_ops = 1
    config.optimizer.lr_milestones = (1,)
    config.log_every_steps = 5
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return config


def one_stage_resnet(config, num_classes=10):
    """The config's ResNet cut to its stem and one basic block (BatchNorm, a residual, the
    (logits, features) output): the same code paths as ResNet-10, a third of its compile time."""
    return functools.partial(resnet.ResNet, block=resnet.BasicBlock, stage_sizes=(1,))(
        num_classes=num_classes, width=config.model.width, cifar_stem=config.model.cifar_stem)


def config_rng(config):
    """A numpy generator seeded by the config's hash (the fake trainers' numbers)."""
    return np.random.default_rng(int(runs.config_hash(config), 16))


def write_fake_results(workdir, results):
    """What a finished run leaves for the experiment commands: results.json; returns it."""
    files.write_json(os.path.join(workdir, "results.json"), results)
    return results
