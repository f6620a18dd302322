"""MGR with your own Flax model: a small CNN of ours, no BatchNorm, on the embedded digits.

    python -m examples.own_cnn                          # exact and finite-difference MPS
    python -m examples.own_cnn --hypergradients=exact --steps=100

The model sees scikit-learn's digits as they come, 8x8 and one channel, normalised by our own
function; the shipped StyleGAN2-ADA generator makes 16x16 RGB digits, which the step resizes
to 8x8 and maps to one channel (luma). What the step builder needs of the model is the
contract in `mgr_jax/contract.py`: `apply(variables, images)` returns (logits, features), the
features being the pooled vector PCR compares. Nothing here reads a config file.
"""
import argparse
import time

import flax.linen as nn
import jax
import numpy as np
import optax
from sklearn.datasets import load_digits

from mgr_jax import classifier, contract, methods
from mgr_jax.data import protocol
from mgr_jax.configs.default import SHIPPED_GENERATOR  # package data: mgr_jax/assets/
from mgr_jax.generators import stylegan2_ada, tiny

NUM_CLASSES = 10


class SmallCNN(nn.Module):
    """Two 3x3 convolutions, a dense layer, a linear head: (N, 8, 8, 1) -> (logits (N, 10),
    features (N, 64)). No BatchNorm and no `train` keyword: the classifier contract allows
    both; the features are the vector the head reads (g(x), what PCR compares)."""
    num_classes: int = NUM_CLASSES
    width: int = 32
    feature_dim: int = 64

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(self.width // 2, (3, 3))(x))
        h = nn.relu(nn.Conv(self.width, (3, 3), strides=(2, 2))(h))
        features = nn.relu(nn.Dense(self.feature_dim)(h.reshape(h.shape[0], -1)))
        return nn.Dense(self.num_classes)(features), features


def normalize(images01):
    """Our input normalisation, [0, 1] -> [-1, 1]: applied to real batches here and to the
    synthetic images inside the step (the one function `Classifier.normalize`)."""
    return (images01 - 0.5) / 0.5


def load_splits(seed=0):
    """Digits as (N, 8, 8, 1) float32 in [0, 1]: train (D), val (D_val), test splits."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int32)
    rest, test = protocol.stratified_split(labels, 0.2, seed)
    d_local, val_local = protocol.stratified_split(labels[rest], 0.1, seed)
    pick = lambda idx: (images[idx], labels[idx])  # noqa: E731
    return {"train": pick(rest[d_local]), "val": pick(rest[val_local]), "test": pick(test)}


def load_generator(which):
    """The shipped digits generator, or a tiny random one ("random", for quick checks)."""
    if which == "random":
        return tiny.load(seed=0, latent_dim=32, num_classes=NUM_CLASSES, resolution=16)
    return stylegan2_ada.load(which)


def fit(clf, hypergradient, args, splits, generator):
    """Train the classifier `clf` with MGR and one hypergradient on the digits: (final
    TrainState, last metrics, seconds, compilation included)."""
    lr_fn = optax.cosine_decay_schedule(args.lr, max(args.steps, 1))
    tx = optax.sgd(lr_fn, momentum=0.9, nesterov=True)
    method = methods.build_method(
        "mgr", model=clf, tx=tx, learning_rate_fn=lr_fn, num_classes=NUM_CLASSES,
        generator=generator,
        synthetic=methods.SyntheticSettings(lambda_=args.lambda_, batch_size=args.batch_size,
                                            augment_num_ops=args.augment_ops),
        mps=methods.MPSSettings(hypergradient=hypergradient))
    k_init, k_meta, k_loop = jax.random.split(jax.random.key(args.seed), 3)
    state = classifier.create_train_state(k_init, clf, tx, meta=method.init_meta(k_meta))
    step = jax.jit(method.train_step, donate_argnums=(0,))

    (x, y), (xv, yv) = splits["train"], splits["val"]
    order = np.random.default_rng(args.seed)
    start, metrics = time.time(), {}
    for _ in range(args.steps):
        i = order.integers(0, len(y), args.batch_size)
        j = order.integers(0, len(yv), args.batch_size)
        batch = {"image": clf.prepare(x[i]), "label": y[i],  # real images: normalised by us
                 "val_image": clf.prepare(xv[j]), "val_label": yv[j]}
        state, metrics = step(state, batch, k_loop, method.frozen)  # the step folds in its count
    return state, jax.device_get(metrics), time.time() - start


def summary(hypergradient, args, logits, labels, metrics, seconds):
    """The results dict of one run: test top-1 from the test logits, the last losses."""
    return {"hypergradient": hypergradient, "steps": args.steps,
            "test_top1": 100.0 * float(np.mean(np.argmax(logits, -1) == labels)),
            "last_loss": float(metrics.get("loss", np.nan)),
            "last_meta_loss": float(metrics.get("meta_loss", np.nan)), "seconds": seconds}


def train_one(hypergradient, args, splits, generator):
    """Train the CNN with MGR and one hypergradient; returns a dict of results."""
    clf = contract.Classifier(SmallCNN(), input_shape=(8, 8, 1), normalize=normalize,
                              train_kwarg=None)
    state, metrics, seconds = fit(clf, hypergradient, args, splits, generator)
    xt, yt = splits["test"]
    logits, _, _ = classifier.classifier_forward(clf, state.params, state.batch_stats,
                                                 clf.prepare(xt), False)
    return summary(hypergradient, args, logits, yt, metrics, seconds)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--lambda_", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--augment_ops", type=int, default=2, help="RandAugment ops of T per sample")
    p.add_argument("--hypergradients", default="exact,finite_difference")
    p.add_argument("--generator", default=SHIPPED_GENERATOR,
                   help="a converted StyleGAN2-ADA directory or snapshot, or 'random'")
    return p.parse_args(argv)


def main(argv=None, train=train_one, label="mgr"):
    """Train with each hypergradient of --hypergradients; `train` trains one (the NNX example
    passes its own)."""
    args = parse_args(argv)
    splits, generator = load_splits(args.seed), load_generator(args.generator)
    results = []
    for hypergradient in [h.strip() for h in args.hypergradients.split(",") if h.strip()]:
        out = train(hypergradient, args, splits, generator)
        print(f"{label}, {out['hypergradient']}: test top-1 {out['test_top1']:.2f} % after "
              f"{out['steps']} steps ({out['seconds']:.1f} s, compilation included), "
              f"last loss {out['last_loss']:.4f}", flush=True)
        results.append(out)
    return results


if __name__ == "__main__":
    main()
