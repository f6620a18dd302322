"""Generator quality measured with a classifier trained on the real data (D).

Two numbers per snapshot, both from conditional samples of G_ema (noise "const", psi 1), fed
to the classifier exactly as MGR feeds synthetic samples (`synthetic.synthesize`):
  - label accuracy (%): how often the classifier assigns a sample to the class it was
    generated for (chance = 100 / num_classes);
  - Frechet distance between Gaussians fitted to the classifier's pooled features of the real
    D images and of the samples: ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)).
The Frechet distance is FID's formula in another feature space (a small ResNet-18 trained on
16x16 digits, not Inception-v3 on ImageNet): it is comparable only with itself (same
classifier, same sample count), never with published FIDs.
"""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mgr_jax import frechet, synthetic
from mgr_jax.data import protocol
from mgr_jax.generators import stylegan2_ada as sg_generator
from mgr_jax.run import build, train


def classifier_config(config):
    """The metric classifier's config: `config.metric.classifier` (the classifier's default
    config, which the generator config embeds) on the generator config's data split."""
    cls = ml_collections.ConfigDict(config.metric.classifier.to_dict())
    cls.method = "base"
    cls.seed = 0
    cls.num_epochs = config.metric.classifier_num_epochs
    cls.model.width = config.metric.classifier_width
    cls.eval_batch_size = config.eval_batch_size
    for key, value in config.data.items():
        cls.data[key] = value
    # The metric's schedule (config.metric.classifier_lr_milestones, set for 15 epochs),
    # scaled to another classifier_num_epochs.
    milestones = config.metric.get("classifier_lr_milestones", (6, 9, 11))
    cls.optimizer.lr_milestones = tuple(sorted({max(1, round(m * cls.num_epochs / 15))
                                                for m in milestones}))
    return cls


def ensure_classifier(cls_config, directory):
    """Train the metric classifier into `directory` unless it finished there before."""
    if not os.path.exists(os.path.join(directory, "results.json")):
        print(f"training the metric classifier into {directory}", flush=True)
        train.train_and_evaluate(cls_config, directory)
    with open(os.path.join(directory, "results.json")) as f:
        return json.load(f)


class ClassifierMetrics:
    """Label accuracy and Frechet distance of a generator, in a trained classifier's space."""

    def __init__(self, cls_config, directory, real_images, num_classes, batch_size=256):
        """`real_images`: the real D images, normalised as the classifier's input."""
        state = train.restore_state(cls_config, directory, which="best")
        model = build.create_model(cls_config, num_classes)
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        self._apply = jax.jit(lambda x: model.apply(variables, x, train=False))
        self.image_size = cls_config.data.image_size
        self.batch_size = batch_size
        self._samplers = {}  # G -> jitted (variables, z, labels) -> normalised images
        _, real_features = self._run(real_images)
        self.real_moments = frechet.moments(real_features)

    def _run(self, images):
        """(logits, features) over `images` (normalised), in fixed-size batches."""
        logits, feats = [], []
        bs = self.batch_size
        for start in range(0, len(images), bs):
            chunk = np.asarray(images[start:start + bs])
            n = len(chunk)
            if n < bs:  # one static shape: one compile
                chunk = np.concatenate([chunk, np.zeros((bs - n,) + chunk.shape[1:],
                                                        chunk.dtype)])
            out_logits, out_feats = self._apply(jnp.asarray(chunk))
            logits.append(np.asarray(out_logits)[:n])
            feats.append(np.asarray(out_feats)[:n])
        return np.concatenate(logits), np.concatenate(feats)

    def evaluate(self, G, variables, key, num_samples):
        """{"label_accuracy", "frechet_distance"} of G (a stylegan2.Generator) with `variables`;
        labels cycle through the classes, z from `key` (fixed key: comparable snapshots)."""
        gen = sg_generator.from_module(G, variables)
        num_classes = max(gen.num_classes, 1)
        labels = np.arange(num_samples) % num_classes
        z = jax.random.normal(key, (num_samples,) + gen.latent_shape)
        if G not in self._samplers:
            self._samplers[G] = jax.jit(lambda p, z, y: protocol.normalize(
                synthetic.synthesize(gen, p, z, y, self.image_size)))
        make = self._samplers[G]
        images = np.concatenate([
            np.asarray(make(variables, z[s:s + self.batch_size],
                            jnp.asarray(labels[s:s + self.batch_size])))
            for s in range(0, num_samples, self.batch_size)])
        logits, feats = self._run(images)
        out = {"frechet_distance": frechet.frechet_distance(*self.real_moments,
                                                            *frechet.moments(feats))}
        if gen.num_classes > 0:
            out["label_accuracy"] = 100.0 * float(np.mean(np.argmax(logits, -1) == labels))
        return out
