"""Features of one run's classifier: of real D images and of the synthetic samples it draws.

The figures command takes them at chosen epochs (snapshots.py): pooled features g(x) and
g(x_p) for Fig. 5, the synthetic images for Fig. 6b's Frechet distance and Fig. 7's samples.
"""
import jax
import numpy as np

from mgr_jax import synthetic
from mgr_jax.data import protocol
from mgr_jax.errors import UserError
from mgr_jax.finder import Finder
from mgr_jax.generators import load_generator
from mgr_jax.run import checkpoints, config_lib, train


def _batches(n, size):
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _pad(x, size):
    x = np.asarray(x)
    if len(x) == size:
        return x
    return np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)])


class Probe:
    """Features of real D images and of a run's synthetic samples, for one run config.

    `num_synthetic` fixed latents z (from `sample_seed`, labels cycling over the classes) are
    drawn once; every epoch and every state sees the same z.
    """

    def __init__(self, config, *, num_synthetic=0, sample_seed=0):
        self.config = config
        self.pipeline, model, _, self.template, _ = train.setup(config)
        self.num_classes = self.pipeline.num_classes
        self.batch = int(config.eval_batch_size)
        self._features = jax.jit(lambda v, x: model.apply(v, x, train=False)[1])
        self.generator = None
        if config.method == "base":
            return
        gen = self.generator = load_generator(config.generator, self.num_classes)
        self.mps = config_lib.is_mps(config.method)
        self.meta_generator = self.mps and config.mps.meta_target == "generator"
        finder = Finder(arch=config.finder.arch, hidden_dim=config.finder.hidden_dim)
        use_finder = self.mps and not self.meta_generator
        size = self.pipeline.image_size

        def latents(meta, z):
            return finder.apply(meta, z) if use_finder and meta is not None else z

        self._latents = jax.jit(latents)
        self._images = jax.jit(lambda g, meta, z, y: protocol.normalize(
            synthetic.synthesize(gen, g, latents(meta, z), y, size)))
        self._raw = jax.jit(lambda g, w, y: gen.sample(g, w, y))
        key = jax.random.key(sample_seed)
        self.z = np.asarray(jax.random.normal(key, (num_synthetic,) + tuple(gen.latent_shape)))
        self.labels = (np.arange(num_synthetic) % max(self.num_classes, 1)).astype(np.int32)

    def restore(self, workdir, which):
        """The run's state at its latest or best checkpoint ("best" falls back to "latest"
        for runs made with keep_best_checkpoint=False)."""
        ckpt = checkpoints.RunCheckpoints(workdir)
        try:
            restored = ckpt.restore_latest(self.template, which=which)
            if restored is None and which == "best":
                restored = ckpt.restore_latest(self.template, which="latest")
        finally:
            ckpt.close()
        if restored is None:
            raise UserError(f"{workdir} has no {which} checkpoint")
        return restored[0]

    def _variables(self, state):
        return {"params": state.params, "batch_stats": state.batch_stats}

    def features(self, state, images):
        """Pooled features g(images) (normalised NHWC) with `state`'s classifier."""
        v = self._variables(state)
        out = [np.asarray(self._features(v, _pad(images[a:b], self.batch)))[:b - a]
               for a, b in _batches(len(images), self.batch)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def real(self, state, limit, feature_state=None, feature_probe=None):
        """(features, labels) of the first `limit` D images (eval transform, fixed order),
        through `feature_probe`'s classifier at `feature_state` (default: this one's)."""
        probe, fstate = feature_probe or self, feature_state or state
        feats, labels, got = [], [], 0
        for batch in self.pipeline.eval_batches("train"):
            n = int(np.sum(batch["mask"]))
            take = min(n, limit - got)
            v = probe._variables(fstate)
            f = np.asarray(probe._features(v, _pad(batch["image"], probe.batch)))
            feats.append(f[:take])
            labels.append(np.asarray(batch["label"])[:take])
            got += take
            if got >= limit:
                break
        return np.concatenate(feats), np.concatenate(labels)

    def sampler_params(self, state):
        """(generator params, finder params or None) the run samples with at `state`."""
        if self.meta_generator:
            return state.meta["params"], None
        return self.generator.params, state.meta["params"] if self.mps else None

    def synthetic_images(self, state, count):
        """Normalised x_p of the first `count` fixed latents, as the run draws them."""
        g, meta = self.sampler_params(state)
        out = [np.asarray(self._images(g, meta, self.z[a:b], self.labels[a:b]))
               for a, b in _batches(count, self.batch)]
        return np.concatenate(out)

    def class_samples(self, state, class_index, count, uniform):
        """[0, 1] images G(z) (uniform) or G(F(z)) of one class at G's resolution."""
        g, meta = self.sampler_params(state)
        if uniform:
            g, meta = self.generator.params, None
        z = self.z[:count]
        y = np.full((count,), class_index, np.int32)
        w = self._latents(meta, z) if meta is not None else z
        return np.clip((np.asarray(self._raw(g, w, y)) + 1.0) / 2.0, 0.0, 1.0)

    def close(self):
        self.pipeline.close()
