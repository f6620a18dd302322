"""Oxford Flowers-102 (trnid + valid / tstid):
the paper's protocol (section 4.1), ResNet-18 from ImageNet weights.

Official files in data.manual_dir: 102flowers.tgz, imagelabels.mat, setid.mat
(docs/datasets.md).

    python -m converters.torchvision_resnet resnet18-f37072fd.pth weights/resnet18_imagenet
    python -m mgr_jax.main --config=configs/flowers.py --workdir=runs/flowers \
        --config.data.manual_dir=data/flowers \
        --config.model.init_checkpoint=weights/resnet18_imagenet

The first run prepares the archives once into data.prepared_dir (default
data/flowers/prepared), then reads them with grain.
Subsets: --config.data.subset_fraction=0.1; real-data augmentation:
--config.data.augment=trivialaugment (randaugment, augmix).
"""
from configs import default


def get_config():
    config = default.get_config()
    config.num_epochs = 200
    config.batch_size = 64
    config.synthetic_batch_size = 64
    config.eval_batch_size = 128
    config.optimizer.lr = 0.01
    config.optimizer.lr_milestones = (60, 120, 160)
    config.data.name = "flowers"
    config.data.image_size = 224
    config.data.manual_dir = "data/flowers"
    config.model.arch = "resnet18"
    config.model.width = 1.0
    config.model.cifar_stem = False
    config.model.init_checkpoint = "weights/resnet18_imagenet"
    config.log_every_steps = 20
    return config
