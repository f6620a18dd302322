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
import jax.numpy as jnp
from flax import nnx

from mgr_jax import nnx_classifier

try:  # run as a script, from any directory: python <checkout>/examples/own_nnx_cnn.py
    import own_cnn
except ImportError:  # imported as examples.own_nnx_cnn (python -m, the tests)
    from examples import own_cnn


class SmallNNXCNN(nnx.Module):
    """Two 3x3 convolutions with BatchNorm, a dense layer, a linear head: (N, 8, 8, 1) ->
    (logits (N, 10), features (N, 64)); the features are the vector the head reads (g(x),
    what PCR compares)."""

    def __init__(self, *, rngs, width=32, feature_dim=64, num_classes=own_cnn.NUM_CLASSES):
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
    """Train the NNX CNN with MGR and one hypergradient; returns a dict of results, with the
    trained model as an NNX module."""
    # A factory: init's key draws the weights (an instance, SmallNNXCNN(rngs=...), would
    # start from its own).
    clf = nnx_classifier.from_nnx(lambda rngs: SmallNNXCNN(rngs=rngs), input_shape=(8, 8, 1),
                                  normalize=own_cnn.normalize)
    state, metrics, seconds = own_cnn.fit(clf, hypergradient, args, splits, generator)
    # The trained weights back in an NNX module (eval mode: running statistics).
    model = clf.module.merge({"params": state.params, "batch_stats": state.batch_stats})
    xt, yt = splits["test"]
    logits, _ = model(clf.prepare(jnp.asarray(xt)))
    return {**own_cnn.summary(hypergradient, args, logits, yt, metrics, seconds), "model": model}


def main(argv=None):
    return own_cnn.main(argv, train=train_one, label="mgr (NNX CNN)")


if __name__ == "__main__":
    main()
