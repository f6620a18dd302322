"""MGR with your own Flax NNX model: a small CNN with BatchNorm, on the embedded digits.

    python -m examples.own_nnx_cnn                      # exact and finite-difference MPS
    python -m examples.own_nnx_cnn --hypergradients=exact --steps=100

As `examples/own_cnn.py` (the same digits, normalisation and generator), with the model
written in NNX: `nnx_classifier.from_nnx` gives it the classifier contract's init/apply, its
nnx.Param weights becoming the train state's params and its nnx.BatchStat running statistics
its batch_stats. The steps switch BatchNorm between batch and running statistics themselves.
After training, `merge` returns the trained model as an NNX module again. Nothing here reads a
config file.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mgr_jax import classifier, methods, nnx_classifier

try:  # run as a script, from any directory: python <checkout>/examples/own_nnx_cnn.py
    from own_cnn import NUM_CLASSES, SHIPPED_GENERATOR, load_generator, load_splits, normalize
except ImportError:  # imported as examples.own_nnx_cnn (python -m, the tests)
    from examples.own_cnn import (NUM_CLASSES, SHIPPED_GENERATOR, load_generator, load_splits,
                                  normalize)


class SmallNNXCNN(nnx.Module):
    """Two 3x3 convolutions with BatchNorm, a dense layer, a linear head: (N, 8, 8, 1) ->
    (logits (N, 10), features (N, 64)); the features are the vector the head reads (g(x),
    what PCR compares)."""

    def __init__(self, *, rngs, width=32, feature_dim=64, num_classes=NUM_CLASSES):
        self.conv1 = nnx.Conv(1, width // 2, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(width // 2, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(width // 2, width, (3, 3), strides=(2, 2), rngs=rngs)
        self.bn2 = nnx.BatchNorm(width, momentum=0.9, rngs=rngs)
        self.fc = nnx.Linear(4 * 4 * width, feature_dim, rngs=rngs)  # 8x8 -> 4x4 by stride 2
        self.head = nnx.Linear(feature_dim, num_classes, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.bn1(self.conv1(x)))
        h = nnx.relu(self.bn2(self.conv2(h)))
        features = nnx.relu(self.fc(h.reshape(h.shape[0], -1)))
        return self.head(features), features


def train_one(hypergradient, args, splits, generator):
    """Train the NNX CNN with MGR and one hypergradient; returns a dict of results."""
    # A factory: init's key draws the weights (an instance, SmallNNXCNN(rngs=...), would
    # start from its own).
    clf = nnx_classifier.from_nnx(lambda rngs: SmallNNXCNN(rngs=rngs), input_shape=(8, 8, 1),
                                  normalize=normalize)
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
    metrics = jax.device_get(metrics)
    seconds = time.time() - start

    # The trained weights back in an NNX module (eval mode: running statistics).
    model = clf.module.merge({"params": state.params, "batch_stats": state.batch_stats})
    xt, yt = splits["test"]
    logits, _ = model(clf.prepare(jnp.asarray(xt)))
    return {"hypergradient": hypergradient, "steps": args.steps, "model": model,
            "test_top1": 100.0 * float(np.mean(np.argmax(logits, -1) == yt)),
            "last_loss": float(metrics.get("loss", np.nan)),
            "last_meta_loss": float(metrics.get("meta_loss", np.nan)), "seconds": seconds}


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


def main(argv=None):
    args = parse_args(argv)
    splits, generator = load_splits(args.seed), load_generator(args.generator)
    results = []
    for hypergradient in [h.strip() for h in args.hypergradients.split(",") if h.strip()]:
        out = train_one(hypergradient, args, splits, generator)
        print(f"mgr (NNX CNN), {out['hypergradient']}: test top-1 {out['test_top1']:.2f} % "
              f"after {out['steps']} steps ({out['seconds']:.1f} s, compilation included), "
              f"last loss {out['last_loss']:.4f}", flush=True)
        results.append(out)
    return results


if __name__ == "__main__":
    main()
