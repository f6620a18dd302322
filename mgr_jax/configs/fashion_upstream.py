"""Upstream task of the transfer setting: Fashion-MNIST classes 0-4 (T-shirt/top, Trouser,
Pullover, Dress, Coat), all of D (27,000 images), base training at 16x16.

The backbone that configs/fashion_transfer.py starts from (README, "Does MPS help here?"):
    python -m mgr_jax.main --config=configs/fashion_upstream.py --workdir=runs/fmnist_upstream
    python -m mgr_jax.run.export --workdir=runs/fmnist_upstream --out=weights/fmnist_upstream
The downstream classes (5-9) are never seen here: not their images, not their labels.
"""

from mgr_jax.configs import fashion_mnist


def get_config():
    config = fashion_mnist.get_config()
    config.method = "base"
    config.data.classes = (0, 1, 2, 3, 4)
    # 16x16 (bilinear from 28x28) as the downstream task and its generator: a CPU-sized step.
    config.data.image_size = 16
    config.num_epochs = 4  # 211 steps per epoch at 128
    config.optimizer.lr = 0.1
    config.optimizer.lr_milestones = (2, 3)
    return config
