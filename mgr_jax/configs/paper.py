"""The paper's training protocol (section 4.1), shared by the dataset configs.

ResNet-18 from converted ImageNet weights, 224x224 inputs, 200 epochs, lr 0.01 divided by 10 at
epochs 60, 120 and 160, Nesterov momentum 0.9, batch 64 real + 64 synthetic; the generator is
the user's converted StyleGAN2-ADA snapshot trained on the same data (README, "Generators").
"""
from mgr_jax.configs import default


def get_config(dataset="cars"):
    """The protocol for `dataset`, reading its archives from data/<dataset>."""
    config = default.get_config()
    config.num_epochs = 200
    config.batch_size = 64
    config.synthetic_batch_size = 64
    config.eval_batch_size = 128
    config.optimizer.lr = 0.01
    config.optimizer.lr_milestones = (60, 120, 160)
    config.data.name = dataset
    config.data.image_size = 224
    config.data.manual_dir = f"data/{dataset}"
    config.model.arch = "resnet18"
    config.model.width = 1.0
    config.model.cifar_stem = False
    config.model.init_checkpoint = "weights/resnet18_imagenet"
    config.generator.checkpoint = f"weights/{dataset}_stylegan2"
    config.lambda_ = 1.0  # choose it on D_val: python -m mgr_jax.experiments.sweep_lambda
    config.log_every_steps = 20
    return config
