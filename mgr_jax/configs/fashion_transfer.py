"""Transfer in the paper's regime, CPU-sized: a pretrained backbone, 20 labelled images per
class, and a generator trained on those images only (README, "Does MPS help here?").

Downstream task: Fashion-MNIST classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot; labels
0-4 here) at 16x16. D: 20 images per class (100) drawn from the 90 % training part of the
official training split; D_val: the other 10 % (3,000); test: every official test image of
these classes (5,000). The classifier starts from the backbone of configs/fashion_upstream.py
(classes 0-4, disjoint from these) with a fresh head, as the paper starts from ImageNet; the
generator is configs/generator/fashion_transfer.py's, trained on the 100 images of D only.
Both are committed under docs/results/fmnist_transfer/weights (paths relative to a checkout):
    python -m mgr_jax.main --config=configs/fashion_transfer.py --workdir=runs/fmnist_mgr
Schedule: the paper's (Nesterov SGD lr 0.01, x0.1 at 30/60/80 % of the epochs, batches of
real and synthetic images of one size), 30 epochs of 5 steps; lambda and the finder's
optimiser are chosen on D_val by the experiments in docs/results/fmnist_transfer.
"""

from mgr_jax.configs import fashion_mnist

WEIGHTS = "docs/results/fmnist_transfer/weights"


def get_config():
    config = fashion_mnist.get_config()
    config.method = "mgr"
    config.data.classes = (5, 6, 7, 8, 9)
    config.data.image_size = 16
    config.data.subset_fraction = 20 / 5400  # 5,400 per class in D -> 20 per class
    config.model.init_checkpoint = f"{WEIGHTS}/upstream"
    config.model.fresh_head = True
    config.generator.kind = "stylegan2_ada"
    config.generator.checkpoint = f"{WEIGHTS}/generator"
    config.batch_size = 20
    config.synthetic_batch_size = 20
    config.eval_batch_size = 500
    config.num_epochs = 30
    config.optimizer.lr = 0.01
    config.optimizer.lr_milestones = (9, 18, 24)
    config.lambda_ = 1.0  # the paper's value from ImageNet weights; the sweep chooses on D_val
    # Every step in metrics.jsonl: the first meta-step's hypergradient norm is a precondition.
    config.log_every_steps = 1
    return config
