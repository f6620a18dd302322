"""The figures' drawings (matplotlib PNGs): curves with a ± std band, 2-D embeddings of
features, sample grids.

matplotlib gets its file-only "Agg" backend before pyplot is imported; umap-learn is optional
(t-SNE stands in without it).
"""
import math
import warnings

import matplotlib
import numpy as np
from sklearn.manifold import TSNE

matplotlib.use("Agg")  # files only, no display; must precede the pyplot import
import matplotlib.pyplot as plt  # noqa: E402

try:
    import umap  # umap-learn: optional, t-SNE stands in without it
except ImportError:
    umap = None

from mgr_jax.experiments.tables import TABLE_LABELS, mean_std
from mgr_jax.files import tile_grid


def embed_2d(x, method="umap", seed=0):
    """2-D embedding of the rows of `x`: UMAP (default parameters), t-SNE or PCA."""
    x = np.asarray(x, np.float64)
    if method == "umap":
        if umap is None:
            print("umap-learn is not installed; using t-SNE instead", flush=True)
            method = "tsne"
        else:
            with warnings.catch_warnings():  # "n_jobs overridden by setting random_state"
                warnings.simplefilter("ignore", UserWarning)
                return umap.UMAP(random_state=seed).fit_transform(x)
    if method == "tsne":
        perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.0)))
        return TSNE(n_components=2, init="pca", random_state=seed,
                    perplexity=perplexity).fit_transform(x)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def _pyplot():
    """matplotlib.pyplot on the file-only "Agg" backend (set at import, before pyplot)."""
    return plt


def _save(plt, fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def plot_curves(path, curves, ylabel, title):
    """`curves`: {label: {epoch: [values over seeds]}} -> mean line with a ± std band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    lows, highs = [], []
    for label, per_epoch in curves.items():
        epochs = sorted(per_epoch)
        stats = [mean_std(per_epoch[e]) for e in epochs]
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
    _save(plt, fig, path)


def plot_embeddings(path, panels, methods, epochs, embedding):
    """`panels[(method, epoch)]` = a features npz as a dict; rows methods, columns epochs."""
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
                ax.set_ylabel(TABLE_LABELS.get(m, m))
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
    _save(plt, fig, path)


def _grid(images, columns):
    """[0, 1] images (N, H, W, C) as one image, `columns` wide; empty cells are white."""
    images = np.asarray(images)
    rows = -(-len(images) // columns)
    blank = np.ones((rows * columns - len(images),) + images.shape[1:], images.dtype)
    return tile_grid(np.concatenate([images, blank]), columns)


def plot_samples(path, uniform, mps, title):
    """Two sample grids side by side: (a) uniform G(z), (b) MPS G(F(z))."""
    plt = _pyplot()
    columns = int(math.ceil(math.sqrt(len(uniform))))
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    for ax, images, label in ((axes[0], uniform, "(a) Uniform"), (axes[1], mps, "(b) MPS")):
        ax.imshow(_grid(images, columns).squeeze(), interpolation="nearest")
        ax.set_title(label)
        ax.axis("off")
    fig.suptitle(title)
    _save(plt, fig, path)
