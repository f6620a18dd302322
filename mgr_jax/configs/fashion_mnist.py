"""Fashion-MNIST from its official idx files: ResNet-18 (width 1/4, CIFAR stem) at 28x28.

The four files are where `apt-get install dataset-fashion-mnist` puts them (else set
data.manual_dir; docs/datasets.md):
    python -m mgr_jax.main --config=configs/fashion_mnist.py --workdir=runs/fashion_mnist

A class subset, relabelled 0..4 in that order (e.g. a downstream task for a backbone pretrained
on classes 0-4 and exported with `python -m mgr_jax.run.export`):
    --config.data.classes="(5,6,7,8,9)"
No generator of Fashion-MNIST ships with mgr-jax, so the method is base; the others need one:
    --config.method=mgr --config.generator.kind=stylegan2_ada --config.generator.checkpoint=G.pkl
"""

from mgr_jax.configs import default


def get_config():
    config = default.get_config()
    config.method = "base"
    config.generator.checkpoint = ""  # the shipped generator draws digits, not clothes
    config.data.name = "fashion_mnist"
    config.data.manual_dir = "/usr/share/datasets/fashion-mnist"
    config.data.image_size = 28  # the files' own size: no resampling
    # 54,000 images in D: 421 steps per epoch at 128; the default's lr scaled with the batch.
    config.batch_size = 128
    config.synthetic_batch_size = 128
    config.eval_batch_size = 500
    config.optimizer.lr = 0.05 * 128 / 64
    return config
