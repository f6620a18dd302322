"""Embedded default: ResNet-18 (width 1/4, CIFAR stem) on scikit-learn's handwritten digits.

Runs offline in a few minutes on a 2-core CPU:
    python -m mgr_jax.main --config=configs/default.py --workdir=runs/default
Override any field on the command line, e.g. `--config.method=pcr --config.seed=1`.

Why digits: scikit-learn ships the UCI optical-recognition digits (1,797 labelled 8x8 images,
10 classes) inside the wheel, so it needs no network and no manual download; it is a real
labelled image dataset, small enough for CPU, and hard enough at low label counts
(`data.subset_fraction`) to be the small-data regime MGR is meant for. It has no official
test split, so a fixed-seed stratified 80/20 split plays that role (`data.test_fraction`).
"""
import os

import ml_collections

# The generator shipped for the embedded dataset (docs/generator_training.md): package data,
# mgr_jax/assets/, found beside this file in a checkout and in an installed package alike.
SHIPPED_GENERATOR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "assets", "digits_stylegan2")


def get_config():
    config = ml_collections.ConfigDict()
    # One of: base, gda, gda_mh, gda_ssl, gda_mps, pcr, mgr (SPEC "Methods").
    config.method = "mgr"
    # Seed of initialisation, data order, synthetic draws; splits use data.split_seed.
    config.seed = 0
    config.num_epochs = 12
    # Real samples per step; synthetic samples per step are `synthetic_batch_size`.
    config.batch_size = 64
    config.synthetic_batch_size = 64
    config.eval_batch_size = 256

    # Classifier optimiser: Nesterov SGD, lr x lr_decay at each epoch in lr_milestones.
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.lr = 0.05
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    # The paper does not use weight decay; kept as an option.
    config.optimizer.weight_decay = 0.0
    config.optimizer.lr_milestones = (6, 9, 11)
    config.optimizer.lr_decay = 0.1

    config.data = ml_collections.ConfigDict()
    config.data.name = "digits"
    # Where a dataset's official archive files are (unused by the embedded digits).
    config.data.manual_dir = ""
    # Classifier input side; digits are upsampled from 8x8 (bilinear) and made RGB.
    config.data.image_size = 16
    # Fraction of D (the 90 % training part of the official training split) that is used.
    config.data.subset_fraction = 1.0
    # D_val share of the official training split (SPEC: D / D_val = 9:1).
    config.data.val_fraction = 0.1
    # Test share for datasets without an official test split (digits).
    config.data.test_fraction = 0.2
    # Seed of every split (test, D / D_val, subset): fixed so all runs see the same data.
    config.data.split_seed = 0
    # Classes kept, relabelled 0..k-1 in this order, e.g. (5, 6, 7, 8, 9); () = all.
    # fashion_mnist only (an upstream task on some classes, a downstream one on others).
    config.data.classes = ()
    # Real-data augmentation: none, randaugment, trivialaugment, augmix (torchvision's
    # settings, mgr_jax/data/real_augment.py); combinable with every method.
    config.data.augment = "none"
    # Where a paper dataset's archives are prepared once into tfds array_record files;
    # "" = <data.manual_dir>/prepared (docs/datasets.md).
    config.data.prepared_dir = ""
    # Worker processes that decode and augment training batches (grain); 0 = in the main
    # process. 2 fits a 2-core machine; on a GPU host use about the number of spare cores.
    config.data.num_workers = 2
    # Threads decoding evaluation batches in the main process (and training batches when
    # num_workers is 0); 0 = one per core (at most 16).
    config.data.num_threads = 0
    # Training batches each worker keeps ready ahead of the train step.
    config.data.prefetch_batches = 2
    # Eval transform: shorter side to image_size / eval_crop_fraction, then a centre crop
    # (torchvision's Resize(256) + CenterCrop(224) at 224).
    config.data.eval_crop_fraction = 0.875

    config.model = ml_collections.ConfigDict()
    config.model.arch = "resnet18"
    # Channels x width (torchvision's ResNet-18 is 1.0; the CPU default uses 16 stem channels).
    config.model.width = 0.25
    # 3x3 stride-1 stem without max-pool, for small inputs.
    config.model.cifar_stem = True
    # Converted weights directory (converters/*, or a run exported by `python -m
    # mgr_jax.run.export`) to start from; "" = random init.
    config.model.init_checkpoint = ""
    # With init_checkpoint: a fresh classifier head for this task even when the checkpoint's
    # has as many classes (another task's head); False keeps a same-shaped head.
    config.model.fresh_head = True
    # Compute dtype of the classifier: float32 or bfloat16 (parameters stay float32).
    config.model.dtype = "float32"
    # Recompute each residual block's activations in the backward pass instead of keeping them
    # (less memory per step, about one more forward pass of compute; same results).
    config.model.remat = False

    # Weight of the synthetic-sample loss: the paper's lambda (grid 0.1..1.0 chosen on D_val).
    # Named lambda_ because `--config.lambda=` is a Python keyword the flag parser refuses.
    # 0.1 here, not chosen on D_val: an early, uncommitted trial of PCR at 1.0 from scratch
    # had val 10 % after epoch 1; the paper starts from ImageNet weights (configs/paper.py
    # uses 1.0; on the Fashion-MNIST transfer setting D_val chose 0.1 of 0.1/0.2/0.5/1.0).
    config.lambda_ = 0.1

    # Generator of the synthetic samples (methods other than base). kind: random (a random
    # tiny generator, for tests), stylegan2_ada, stylegan_xl, biggan, fastgan, edm; checkpoint:
    # a converted directory (python -m converters.<kind>) or the original file.
    config.generator = ml_collections.ConfigDict()
    config.generator.kind = "stylegan2_ada"
    config.generator.checkpoint = SHIPPED_GENERATOR
    config.generator.seed = 0  # random kind only: its init seed, latent size and resolution.
    config.generator.latent_dim = 32
    config.generator.resolution = 16
    # Keyword arguments of the kind's loader (mgr_jax/generators/<kind>.py `load`), e.g.
    # --config.generator.kwargs='{"num_steps": 2}' (edm: Heun steps, default 18),
    # '{"kwargs_json": "G.json"}' (biggan / stylegan2_ada: constructor settings of a .pth),
    # '{"truncation_psi": 0.7}' (stylegan2_ada), '{"noise_mode": "none"}' (fastgan).
    config.generator.kwargs = ml_collections.ConfigDict()

    # The strong augmentation T on synthetic images (differentiable RandAugment).
    config.augment = ml_collections.ConfigDict()
    config.augment.num_ops = 2
    config.augment.max_magnitude = 1.0

    # UDA of gda_ssl: sharpening temperature and confidence threshold.
    config.uda = ml_collections.ConfigDict()
    config.uda.temperature = 0.4
    config.uda.threshold = 0.8

    # Finder F(z) of MPS (Eq. 10): residual, residual_shallow, linear, mlp.
    config.finder = ml_collections.ConfigDict()
    config.finder.arch = "residual"
    config.finder.hidden_dim = 0  # 0: the latent size.

    # Meta-learning of the finder (Algorithm 1), for gda_mps and mgr.
    config.mps = ml_collections.ConfigDict()
    config.mps.hypergradient = "exact"  # or finite_difference (DARTS Eq. 9).
    config.mps.fd_eps = 0.01  # eps = fd_eps / ||v|| for finite_difference.
    config.mps.finder_lr = 1e-4  # Adam.
    # The finder's optimiser: adam (the paper's) or sgd (plain steps), Adam's betas (lower:
    # shorter memory of past hypergradients), the hypergradient divided by its norm (the
    # optimiser sees its direction only), and a linear warm-up of finder_lr over this many
    # finder updates (0: none).
    config.mps.finder_optimizer = "adam"
    config.mps.finder_b1 = 0.9
    config.mps.finder_b2 = 0.999
    config.mps.normalize_hypergrad = False
    config.mps.finder_warmup_steps = 0
    # The finder's meta-update every k-th step only; the steps between are the method's
    # uniform step (PCR for mgr, GDA for gda_mps) on x_p = G(F(z)) with the current finder.
    config.mps.update_every = 1
    config.mps.kl_weight = 0.01  # lambda_KL of Eq. 11; 0 turns the KL penalty off.
    config.mps.meta_target = "finder"  # or generator: meta-optimise G's params instead.
    # meta (Algorithm 1), or the Table 7 ablations without meta-learning: max_ce / max_pcr
    # (the finder maximises the classifier's CE / PCR on x_p; the classifier keeps the
    # method's own synthetic loss, e.g. PCR for mgr).
    config.mps.finder_update = "meta"
    config.mps.log_hypergrad_cosine = False  # also compute the other hypergradient and log
                                             # their cosine (costs one more hypergradient).
    # Evaluate the meta-objective CE_val(theta') again after each finder update (one more
    # D_val forward) and log its change: meta_descent (new - old), meta_descended (1 if it
    # went down; the epoch mean is the fraction of updates that lowered it).
    config.mps.log_meta_descent = False

    # Multi-host runs: jax.distributed.initialize() before anything else (README, "Scaling").
    # With enabled and no coordinator_address, the cluster environment (SLURM, TPU) is read.
    config.distributed = ml_collections.ConfigDict()
    config.distributed.enabled = False
    config.distributed.coordinator_address = ""
    config.distributed.num_processes = 1
    config.distributed.process_id = 0
    # Seconds to wait for every process to join (then one line naming those missing).
    config.distributed.timeout_s = 300

    config.log_every_steps = 50
    # Where checkpoints keep the best-validation epoch besides the latest one.
    config.keep_best_checkpoint = True
    return config
