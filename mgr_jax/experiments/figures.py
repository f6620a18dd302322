"""Figures 5, 6 and 7 of the paper from training runs (matplotlib PNGs, plus their numbers).

    python -m mgr_jax.experiments.figures --config=configs/cars.py --workdir=results/figures \
        --lambda_file=results/lambda/chosen_lambda.json [--seeds=0,1,2] \
        [--feature_epochs=5,15,30] [--sample_class=Hummer]

fig6a_val_loss.png  validation loss per epoch, uniform sampling (--uniform_method, pcr) vs MPS
                    (--mps_method, mgr), mean ± std over seeds, from each run's metrics.jsonl.
fig6b_frechet.png   Frechet distance per epoch between the real D images and the synthetic
                    samples the run draws (fixed latents z, --fd_samples of each), in the pooled
                    feature space of a classifier: `metric` (default), the best checkpoint of a
                    `base` run of the same config (a fixed space, as FID's Inception is; the
                    uniform sampler does not change during training, so there its distance is
                    one number, drawn flat), or `self`, each run's own g at that epoch.
fig5_umap.png       2-D embedding (UMAP; --embedding=tsne or pca) of g(x) (real D images,
                    coloured by class) and g(x_p) (synthetic, black) at --feature_epochs for
                    --umap_methods (gda, pcr, mgr), first seed.
fig7_samples.png    samples of one class from the same z: uniform (G(z)) and MPS (G(F(z)),
                    the MPS run's best-validation finder), first seed.
Also figures.md, figures_val_loss.csv, figures_frechet.csv and figures_runs.csv.

Per-epoch states: a run keeps only its latest and best checkpoints, so the runs that need
features at given epochs are trained in pieces (train_and_evaluate with max_epochs_this_run up
to the next needed epoch) and the features are taken between pieces into
<run>/figure_snapshots-<settings hash>/ (a killed command resumes there). Each piece compiles
the train step again; the command's persistent compilation cache (--compilation_cache) makes
that a cache read. A run that already finished without snapshots (e.g. shared through
--runs_dir with a table command) can only give its latest and best epochs; the others are
reported missing. Larger --fd_every means fewer pieces.
"""
import hashlib
import json
import math
import os
import sys
import warnings

import numpy as np

from mgr_jax.errors import UserError
from mgr_jax.experiments import common

DEFAULT_SEEDS = "0,1,2"
DEFAULT_FEATURE_EPOCHS = (5, 15, 30)
EMBEDDINGS = ("umap", "tsne", "pca")
FD_SPACES = ("metric", "self")


# ----------------------------------------------------------------------------- features

def _batches(n, size):
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _pad(x, size):
    x = np.asarray(x)
    if len(x) == size:
        return x
    return np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)])


class Probe:
    """Features of real D images and of a run's synthetic samples, for one run config."""

    def __init__(self, config, *, num_synthetic=0, sample_seed=0):
        import jax  # noqa: PLC0415

        from mgr_jax import input_pipeline, methods, synthetic, train  # noqa: PLC0415
        from mgr_jax.finder import Finder  # noqa: PLC0415
        from mgr_jax.generators import load_generator  # noqa: PLC0415

        self.config = config
        self.pipeline, model, _, self.template, _ = train.setup(config)
        self.num_classes = self.pipeline.num_classes
        self.batch = int(config.eval_batch_size)
        self._features = jax.jit(lambda v, x: model.apply(v, x, train=False)[1])
        self.generator = None
        if config.method == "base":
            return
        gen = self.generator = load_generator(config.generator, self.num_classes)
        self.mps = methods.SYNTHETIC[config.method][1] == "mps"
        self.meta_generator = self.mps and config.mps.meta_target == "generator"
        finder = Finder(arch=config.finder.arch, hidden_dim=config.finder.hidden_dim)
        use_finder = self.mps and not self.meta_generator
        size = self.pipeline.image_size

        def latents(meta, z):
            return finder.apply(meta, z) if use_finder and meta is not None else z

        self._latents = jax.jit(latents)
        self._images = jax.jit(lambda g, meta, z, y: input_pipeline.normalize(
            synthetic.synthesize(gen, g, latents(meta, z), y, size)))
        self._raw = jax.jit(lambda g, w, y: gen.sample(g, w, y))
        key = jax.random.key(sample_seed)
        self.z = np.asarray(jax.random.normal(key, (num_synthetic,) + tuple(gen.latent_shape)))
        self.labels = (np.arange(num_synthetic) % max(self.num_classes, 1)).astype(np.int32)

    def restore(self, workdir, which):
        """The run's state at its latest or best checkpoint ("best" falls back to "latest"
        for runs made with keep_best_checkpoint=False)."""
        from mgr_jax import checkpoints  # noqa: PLC0415
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
        close = getattr(self.pipeline, "close", None)
        if close is not None:
            close()


def moments(features):
    f = np.asarray(features, np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet(real_features, synthetic_features):
    from mgr_jax.gan_metrics import frechet_distance  # noqa: PLC0415
    return frechet_distance(*moments(real_features), *moments(synthetic_features))


# ----------------------------------------------------------------------------- snapshots

class Snapshots:
    """Per-epoch features of one run, stored beside it; `take` computes what an epoch needs."""

    def __init__(self, job, key, *, feature_epochs=(), fd_epochs=(), settings):
        self.dir = os.path.join(job.workdir, f"figure_snapshots-{key}")
        self.feature_epochs, self.fd_epochs = set(feature_epochs), set(fd_epochs)
        self.settings = settings
        self.fd_path = os.path.join(self.dir, "frechet.json")

    @property
    def epochs(self):
        return sorted(self.feature_epochs | self.fd_epochs)

    def features_path(self, epoch):
        return os.path.join(self.dir, f"features_e{epoch:04d}.npz")

    def frechet(self):
        return {int(k): v for k, v in (common.read_json(self.fd_path) or {}).items()}

    def has(self, epoch):
        if epoch in self.feature_epochs and not os.path.exists(self.features_path(epoch)):
            return False
        return epoch not in self.fd_epochs or epoch in self.frechet()

    def take(self, epoch, state, probe):
        """Compute and store the epoch's features / Frechet distance from `state`."""
        os.makedirs(self.dir, exist_ok=True)
        s = self.settings
        if epoch in self.feature_epochs and not os.path.exists(self.features_path(epoch)):
            real, real_labels = probe.real(state, s["embed_samples"])
            arrays = {"real": real, "real_labels": real_labels}
            if probe.generator is not None:
                arrays["synthetic"] = probe.features(
                    state, probe.synthetic_images(state, s["embed_samples"]))
                arrays["synthetic_labels"] = probe.labels[:s["embed_samples"]]
            tmp = self.features_path(epoch) + ".tmp.npz"
            np.savez(tmp, **arrays)
            os.replace(tmp, self.features_path(epoch))
        if epoch in self.fd_epochs and epoch not in self.frechet():
            images = probe.synthetic_images(state, s["fd_samples"])
            if s["fd_space"] == "self":
                real, _ = probe.real(state, s["fd_samples"])
                value = frechet(real, probe.features(state, images))
            else:
                metric_probe, metric_state, real = s["metric"]
                value = frechet(real, metric_probe.features(metric_state, images))
            values = self.frechet()
            values[epoch] = value
            common.write_json(self.fd_path, {str(k): v for k, v in sorted(values.items())})


def _latest_epoch(workdir):
    from mgr_jax import checkpoints  # noqa: PLC0415
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return 0
    ckpt = checkpoints.RunCheckpoints(workdir)
    try:
        return int(ckpt.latest.latest_step() or 0)
    finally:
        ckpt.close()


def train_with_snapshots(job, snaps, probe, trainer, log=print):
    """Train `job` in pieces ending at each epoch `snaps` needs, taking snapshots between.

    Returns the run's results (None if it diverged). A finished run is not retrained: its
    latest and best checkpoints give the epochs they hold; other missing epochs are reported.
    """
    from mgr_jax import train  # noqa: PLC0415

    results = common.read_json(os.path.join(job.workdir, "results.json"))
    num_epochs = int(job.config.num_epochs)
    needed = [e for e in snaps.epochs if e <= num_epochs]
    if results is not None:
        for epoch in needed:
            if snaps.has(epoch):
                continue
            which = "latest" if epoch == num_epochs else (
                "best" if epoch == results.get("best_epoch") else None)
            if which is None:
                log(f"  {job.name}: finished without a snapshot of epoch {epoch} (only the "
                    "latest and best epochs are kept); it is left out", flush=True)
                continue
            snaps.take(epoch, probe.restore(job.workdir, which), probe)
        return results
    if common.read_json(os.path.join(job.workdir, "diverged.json")) is not None:
        return None
    current = _latest_epoch(job.workdir)
    if current in needed and not snaps.has(current):  # killed between a piece and its snapshot
        snaps.take(current, probe.restore(job.workdir, "latest"), probe)
    lost = [e for e in needed if e < current and not snaps.has(e)]
    if lost:
        log(f"  {job.name}: already past epochs {lost} without their snapshots; they are left "
            "out", flush=True)
    while True:
        targets = [e for e in needed if e > current and not snaps.has(e)]
        stop = min(targets) if targets else num_epochs
        try:
            out = trainer(job.config, job.workdir, max_epochs_this_run=stop - current)
        except train.TrainingDiverged as e:
            common.write_json(os.path.join(job.workdir, "diverged.json"),
                              {"step": int(e.args[0])})
            log(f"  {job.name}: diverged at step {e.args[0]}", flush=True)
            return None
        current = stop
        if stop in needed and not snaps.has(stop):
            snaps.take(stop, probe.restore(job.workdir, "latest"), probe)
        if out is not None or current >= num_epochs:
            return out if out is not None else common.read_json(
                os.path.join(job.workdir, "results.json"))


# ----------------------------------------------------------------------------- plots

def embed_2d(x, method="umap", seed=0):
    """2-D embedding of the rows of `x`: UMAP (default parameters), t-SNE or PCA."""
    x = np.asarray(x, np.float64)
    if method == "umap":
        try:
            import umap  # noqa: PLC0415
        except ImportError:
            print("umap-learn is not installed; using t-SNE instead", flush=True)
            method = "tsne"
        else:
            with warnings.catch_warnings():  # "n_jobs overridden by setting random_state"
                warnings.simplefilter("ignore", UserWarning)
                return umap.UMAP(random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE  # noqa: PLC0415
        perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.0)))
        return TSNE(n_components=2, init="pca", random_state=seed,
                    perplexity=perplexity).fit_transform(x)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def _pyplot():
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    return plt


def plot_curves(path, curves, ylabel, title):
    """`curves`: {label: {epoch: [values over seeds]}} -> mean line with a ± std band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    lows, highs = [], []
    for label, per_epoch in curves.items():
        epochs = sorted(per_epoch)
        stats = [common.mean_std(per_epoch[e]) for e in epochs]
        mean = np.array([s[0] for s in stats])
        std = np.nan_to_num(np.array([s[1] for s in stats]))
        ax.plot(epochs, mean, marker="o" if len(epochs) < 30 else None, ms=3, label=label)
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
        finite = mean[np.isfinite(mean)]
        if finite.size:
            lows.append(finite.min())
            highs.append(finite.max())
    if lows and min(lows) > 0 and max(highs) / min(lows) > 100:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def plot_embeddings(path, panels, methods, epochs, embedding):
    """`panels[(method, epoch)]` = npz dict; rows methods, columns epochs."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(methods), len(epochs), squeeze=False,
                             figsize=(3.2 * len(epochs), 3.2 * len(methods)))
    for i, m in enumerate(methods):
        for j, e in enumerate(epochs):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"epoch {e}")
            if j == 0:
                ax.set_ylabel(common.METHOD_LABELS.get(m, m))
            data = panels.get((m, e))
            if data is None:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes)
                continue
            real = data["real"]
            syn = data["synthetic"] if "synthetic" in data else np.zeros((0, real.shape[1]))
            xy = embed_2d(np.concatenate([real, syn]), embedding)
            ax.scatter(xy[:len(real), 0], xy[:len(real), 1], c=data["real_labels"], s=3,
                       cmap="tab20", alpha=0.7, label="real g(x)")
            if len(syn):
                ax.scatter(xy[len(real):, 0], xy[len(real):, 1], c="black", s=4, marker="x",
                           linewidths=0.5, label="synthetic g(x_p)")
    axes[0][0].legend(loc="best", fontsize=6, markerscale=2)
    fig.suptitle(f"{embedding.upper()} of the feature space during training")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def _tile(images, columns):
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.ones((rows * h, columns * w, c), images.dtype)
    for k in range(n):
        r, q = divmod(k, columns)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = images[k]
    return grid


def plot_samples(path, uniform, mps, title):
    plt = _pyplot()
    columns = int(math.ceil(math.sqrt(len(uniform))))
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    for ax, images, label in ((axes[0], uniform, "(a) Uniform"), (axes[1], mps, "(b) MPS")):
        ax.imshow(_tile(images, columns).squeeze(), interpolation="nearest")
        ax.set_title(label)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def resolve_class(sample_class, pipeline):
    """A class index from an index or a (case-insensitive) part of a class name."""
    names = list(getattr(pipeline, "class_names", []) or [])
    text = str(sample_class)
    if text.lstrip("-").isdigit():
        index = int(text)
    else:
        hits = [i for i, n in enumerate(names) if text.lower() in n.lower()]
        if not hits:
            raise UserError(f"--sample_class={text!r} matches no class name")
        index = hits[0]
    if not 0 <= index < pipeline.num_classes:
        raise UserError(f"--sample_class={index} is not a class index "
                        f"(0..{pipeline.num_classes - 1})")
    return index, (names[index] if index < len(names) else f"class {index}")


# ----------------------------------------------------------------------------- command

def run(config, workdir, *, seeds=(0, 1, 2), umap_methods=("gda", "pcr", "mgr"),
        uniform_method="pcr", mps_method="mgr", feature_epochs=DEFAULT_FEATURE_EPOCHS,
        fd_every=1, fd_space="metric", fd_samples=2048, embed_samples=500, embedding="umap",
        sample_class="0", num_class_samples=64, sample_seed=0, runs_dir=None, lambda_map=None,
        trainer=None, dry_run=False):
    """Train (or reuse) the runs, take the per-epoch features, draw the four figures.

    Returns {"figures": {name: path}, "tables": [...], "paths": {...}, "jobs": [...]}.
    """
    if embedding not in EMBEDDINGS:
        raise UserError(f"embedding={embedding!r}; choose one of {list(EMBEDDINGS)}")
    if fd_space not in FD_SPACES:
        raise UserError(f"fd_space={fd_space!r}; choose one of {list(FD_SPACES)}")
    common.check_choices(list(umap_methods) + [uniform_method])
    common.check_choices([mps_method], common.MPS_METHODS, "MPS methods")
    trainer = trainer or common.default_trainer()
    runs = common.runs_dir_of(workdir, runs_dir)
    num_epochs = int(config.num_epochs)
    feature_epochs = sorted({int(e) for e in feature_epochs if 1 <= int(e) <= num_epochs}) \
        or [num_epochs]
    fd_epochs = sorted(set(range(fd_every, num_epochs + 1, fd_every)) | {num_epochs}) \
        if fd_every > 0 else []
    first = seeds[0]
    metric_job = common.make_job(config, {"method": "base"}, first, row="metric classifier",
                                 column="-", lambda_map=lambda_map) \
        if fd_epochs and fd_space == "metric" else None
    jobs, needs = [], {}
    for m in dict.fromkeys([uniform_method, mps_method] + list(umap_methods)):
        for seed in seeds:
            job = common.make_job(config, {"method": m}, seed, row=common.METHOD_LABELS[m],
                                  column=f"seed {seed}", lambda_map=lambda_map)
            feats = feature_epochs if (m in umap_methods and seed == first) else []
            fds = fd_epochs if (m == mps_method or (m == uniform_method and fd_space == "self")) \
                else []
            if m != mps_method and m != uniform_method and not feats:
                continue  # only the first seed of a UMAP-only method is needed
            jobs.append(job)
            needs[job.name] = (feats, fds)
    all_jobs = ([metric_job] if metric_job else []) + jobs
    if dry_run:
        common.run_jobs(all_jobs, runs, dry_run=True)
        common.print_plan(all_jobs)
        return {"jobs": all_jobs}
    print(f"figures: {len(all_jobs)} runs in {runs}", flush=True)

    settings = {"embed_samples": int(embed_samples), "fd_samples": int(fd_samples),
                "fd_space": fd_space, "sample_seed": int(sample_seed),
                "metric": metric_job.name if metric_job else None}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    metric = None  # (probe, best state, real D features) of the metric classifier
    if metric_job is not None:
        common.run_jobs([metric_job], runs, trainer=trainer)
        if metric_job.result is None:
            raise UserError(f"the metric classifier run {metric_job.name} failed")
        metric_probe = Probe(metric_job.config)
        metric_state = metric_probe.restore(metric_job.workdir, "best")
        metric = (metric_probe, metric_state, metric_probe.real(metric_state, fd_samples)[0])

    snapshots, class_samples = {}, None
    num_synthetic = max(embed_samples, fd_samples, num_class_samples)
    for i, job in enumerate(jobs, 1):
        job.workdir = os.path.join(runs, job.name)
        feats, fds = needs[job.name]
        snaps = snapshots[job.name] = Snapshots(job, key, feature_epochs=feats, fd_epochs=fds,
                                                settings=dict(settings, metric=metric))
        wants_samples = job.config.method == mps_method and job.seed == first
        finished = os.path.exists(os.path.join(job.workdir, "results.json"))
        print(f"[{i}/{len(jobs)}] {'finished' if finished else 'train'} {job.name} "
              f"(snapshots at epochs {snaps.epochs or 'none'})", flush=True)
        if not wants_samples and all(snaps.has(e) for e in snaps.epochs if e <= num_epochs):
            job.status, job.result = common.run_one(job.config, job.workdir, trainer)
            continue
        probe = Probe(job.config, num_synthetic=num_synthetic, sample_seed=sample_seed)
        try:
            job.result = train_with_snapshots(job, snaps, probe, trainer)
            job.status = "done" if finished else ("ran" if job.result else "diverged")
            if wants_samples and job.result:
                class_samples = _samples(job, probe, sample_class, num_class_samples)
        finally:
            probe.close()
    if metric is not None:
        metric[0].close()

    figures, tables = {}, []
    os.makedirs(workdir, exist_ok=True)
    labels = {uniform_method: f"Uniform ({common.METHOD_LABELS[uniform_method]})",
              mps_method: f"MPS ({common.METHOD_LABELS[mps_method]})"}
    # Fig. 6a: validation loss per epoch.
    curves = {}
    for m in (uniform_method, mps_method):
        per_epoch = {}
        for job in jobs:
            if job.config.method == m:
                for rec in common.read_metrics(job.workdir):
                    per_epoch.setdefault(rec["epoch"], []).append(rec["val_loss"])
        curves[labels[m]] = per_epoch
    figures["fig6a"] = os.path.join(workdir, "fig6a_val_loss.png")
    plot_curves(figures["fig6a"], curves, "validation loss", "Validation loss (Fig. 6a)")
    tables.append(_curve_table("figures_val_loss", "Validation loss per epoch", curves))
    # Fig. 6b: Frechet distance per epoch.
    if fd_epochs:
        fd_curves = {}
        for m in (uniform_method, mps_method):
            per_epoch = {}
            if m == uniform_method and fd_space == "metric":
                value = _uniform_frechet(config, m, metric, lambda_map, fd_samples,
                                         num_synthetic, sample_seed)
                per_epoch = {e: [value] for e in fd_epochs}
            else:
                for job in jobs:
                    if job.config.method == m:
                        for e, v in snapshots[job.name].frechet().items():
                            per_epoch.setdefault(e, []).append(v)
            fd_curves[labels[m]] = per_epoch
        figures["fig6b"] = os.path.join(workdir, "fig6b_frechet.png")
        plot_curves(figures["fig6b"], fd_curves, f"Fréchet distance ({fd_space} features)",
                    "Fréchet distance to D (Fig. 6b)")
        tables.append(_curve_table("figures_frechet",
                                   f"Fréchet distance per epoch ({fd_space} feature space)",
                                   fd_curves))
    # Fig. 5: embeddings at the chosen epochs.
    panels = {}
    for job in jobs:
        snaps = snapshots[job.name]
        for e in snaps.feature_epochs:
            if os.path.exists(snaps.features_path(e)):
                with np.load(snaps.features_path(e)) as data:
                    panels[(job.config.method, e)] = dict(data)
    figures["fig5"] = os.path.join(workdir, "fig5_umap.png")
    plot_embeddings(figures["fig5"], panels, list(umap_methods), feature_epochs, embedding)
    # Fig. 7: samples of one class.
    if class_samples is not None:
        uniform, mps, name = class_samples
        figures["fig7"] = os.path.join(workdir, "fig7_samples.png")
        plot_samples(figures["fig7"], uniform, mps, f"Synthetic samples ({name})")
    footer = "## Figures\n\n" + "\n".join(f"![{k}]({os.path.basename(p)})"
                                           for k, p in figures.items()) + "\n"
    paths = common.write_report(workdir, "figures", tables, all_jobs, header="Figures 5-7",
                                footer=footer)
    return {"figures": figures, "tables": tables, "paths": paths, "jobs": all_jobs}


def _samples(job, probe, sample_class, count):
    """(uniform, MPS, class name) images of one class from the run's best finder."""
    index, name = resolve_class(sample_class, probe.pipeline)
    state = probe.restore(job.workdir, "best")
    return (probe.class_samples(state, index, count, uniform=True),
            probe.class_samples(state, index, count, uniform=False), name)


def _uniform_frechet(config, method, metric, lambda_map, fd_samples, num_synthetic,
                     sample_seed):
    """The uniform sampler's distance in the fixed metric space (independent of training)."""
    cfg = common.derive(config, {"method": method}, lambda_map=lambda_map)
    probe = Probe(cfg, num_synthetic=num_synthetic, sample_seed=sample_seed)
    try:
        metric_probe, metric_state, real = metric
        images = probe.synthetic_images(probe.template, fd_samples)
        return frechet(real, metric_probe.features(metric_state, images))
    finally:
        probe.close()


def _curve_table(key, title, curves):
    table = common.Table(key, title, "Epoch", list(curves), decimals=4,
                         notes=["Mean ± sample std over seeds."])
    epochs = sorted({e for per_epoch in curves.values() for e in per_epoch})
    for e in epochs:
        for label, per_epoch in curves.items():
            if e in per_epoch:
                table.add(str(e), label, per_epoch[e])
    return table


def define_flags(fv):
    from absl import flags  # noqa: PLC0415
    flags.DEFINE_string("umap_methods", "gda,pcr,mgr", "Methods of Fig. 5 (rows).",
                        flag_values=fv)
    flags.DEFINE_string("uniform_method", "pcr", "Uniform-sampling method of Fig. 6.",
                        flag_values=fv)
    flags.DEFINE_string("mps_method", "mgr", "MPS method of Figs. 6 and 7.", flag_values=fv)
    flags.DEFINE_string("feature_epochs", ",".join(map(str, DEFAULT_FEATURE_EPOCHS)),
                        "Epochs of Fig. 5 (those past num_epochs are dropped).", flag_values=fv)
    flags.DEFINE_integer("fd_every", 1, "Fig. 6b every N epochs (and the last); 0 = no Fig. 6b.",
                         flag_values=fv)
    flags.DEFINE_enum("fd_space", "metric", FD_SPACES, "Feature space of the Frechet "
                      "distance: a base run's classifier (metric) or each run's own (self).",
                      flag_values=fv)
    flags.DEFINE_integer("fd_samples", 2048, "Real and synthetic samples per distance.",
                         flag_values=fv)
    flags.DEFINE_integer("embed_samples", 500, "Real and synthetic points per Fig. 5 panel.",
                         flag_values=fv)
    flags.DEFINE_enum("embedding", "umap", EMBEDDINGS, "2-D embedding of Fig. 5.",
                      flag_values=fv)
    flags.DEFINE_string("sample_class", "0", "Class of Fig. 7: an index or part of its name.",
                        flag_values=fv)
    flags.DEFINE_integer("num_class_samples", 64, "Samples per panel of Fig. 7.",
                         flag_values=fv)
    flags.DEFINE_integer("sample_seed", 0, "Seed of the fixed latents z of every figure.",
                         flag_values=fv)


def kwargs_from_flags(fv):
    kwargs = common.common_kwargs(fv)
    kwargs.update(umap_methods=common.parse_list(fv.umap_methods),
                  uniform_method=fv.uniform_method, mps_method=fv.mps_method,
                  feature_epochs=common.parse_list(fv.feature_epochs, int),
                  fd_every=fv.fd_every, fd_space=fv.fd_space, fd_samples=fv.fd_samples,
                  embed_samples=fv.embed_samples, embedding=fv.embedding,
                  sample_class=fv.sample_class, num_class_samples=fv.num_class_samples,
                  sample_seed=fv.sample_seed)
    return kwargs


if __name__ == "__main__":
    common.main(sys.modules[__name__])
