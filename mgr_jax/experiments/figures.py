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
features at given epochs are trained in pieces (snapshots.py: train_and_evaluate with
max_epochs_this_run up to the next needed epoch) and the features are taken between pieces into
<run>/figure_snapshots-<settings hash>/ (a killed command resumes there). Each piece compiles
the train step again; the command's persistent compilation cache (--compilation_cache) makes
that a cache read. A run that already finished without snapshots (e.g. shared through
--runs_dir with a table command) can only give its latest and best epochs; the others are
reported missing. Larger --fd_every means fewer pieces.
"""
import hashlib
import json
import os
import sys

import numpy as np
from absl import flags

from mgr_jax.errors import UserError
from mgr_jax.experiments import cli, plots, runs, tables
from mgr_jax.experiments.probe import Probe
from mgr_jax.experiments.snapshots import Snapshots, train_with_snapshots
from mgr_jax.frechet import frechet_of_features
from mgr_jax.run import train

DEFAULT_SEEDS = "0,1,2"
DEFAULT_FEATURE_EPOCHS = (5, 15, 30)
EMBEDDINGS = ("umap", "tsne", "pca")
FD_SPACES = ("metric", "self")


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


def _plan(config, seeds, umap_methods, uniform_method, mps_method, feature_epochs, fd_epochs,
          fd_space, lambda_map):
    """(metric classifier job or None, the figure runs, {run name: (feature, fd epochs)})."""
    first = seeds[0]
    metric_job = runs.make_job(config, {"method": "base"}, first, row="metric classifier",
                               column="-", lambda_map=lambda_map) \
        if fd_epochs and fd_space == "metric" else None
    jobs, needs = [], {}
    for m in dict.fromkeys([uniform_method, mps_method] + list(umap_methods)):
        for seed in seeds:
            job = runs.make_job(config, {"method": m}, seed, row=tables.TABLE_LABELS[m],
                                column=f"seed {seed}", lambda_map=lambda_map)
            feats = feature_epochs if (m in umap_methods and seed == first) else []
            fds = fd_epochs if (m == mps_method or (m == uniform_method and fd_space == "self")) \
                else []
            if m != mps_method and m != uniform_method and not feats:
                continue  # only the first seed of a UMAP-only method is needed
            jobs.append(job)
            needs[job.name] = (feats, fds)
    return metric_job, jobs, needs


def _metric_space(metric_job, runs_dir, trainer, fd_samples):
    """(probe, best state, real D features) of the metric classifier, trained if need be."""
    runs.run_jobs([metric_job], runs_dir, trainer=trainer)
    if metric_job.result is None:
        raise UserError(f"the metric classifier run {metric_job.name} failed")
    metric_probe = Probe(metric_job.config)
    metric_state = metric_probe.restore(metric_job.workdir, "best")
    return metric_probe, metric_state, metric_probe.real(metric_state, fd_samples)[0]


def _take_snapshots(jobs, needs, runs_dir, key, settings, trainer, *, mps_method, first,
                    num_synthetic, sample_seed, sample_class, num_class_samples):
    """Train (or reuse) every figure run with its snapshots; ({name: Snapshots}, Fig. 7's
    (uniform, MPS, class name) samples or None)."""
    snapshots, class_samples = {}, None
    for i, job in enumerate(jobs, 1):
        job.workdir = os.path.join(runs_dir, job.name)
        feats, fds = needs[job.name]
        snaps = snapshots[job.name] = Snapshots(job, key, feature_epochs=feats, fd_epochs=fds,
                                                settings=settings)
        wants_samples = job.config.method == mps_method and job.seed == first
        finished = os.path.exists(os.path.join(job.workdir, "results.json"))
        print(f"[{i}/{len(jobs)}] {'finished' if finished else 'train'} {job.name} "
              f"(snapshots at epochs {snaps.epochs or 'none'})", flush=True)
        num_epochs = int(job.config.num_epochs)
        if not wants_samples and all(snaps.has(e) for e in snaps.epochs if e <= num_epochs):
            job.status, job.result = runs.run_one(job.config, job.workdir, trainer)
            continue
        probe = Probe(job.config, num_synthetic=num_synthetic, sample_seed=sample_seed)
        try:
            job.result = train_with_snapshots(job, snaps, probe, trainer)
            job.status = "done" if finished else ("ran" if job.result else "diverged")
            if wants_samples and job.result:
                class_samples = _samples(job, probe, sample_class, num_class_samples)
        finally:
            probe.close()
    return snapshots, class_samples


def _samples(job, probe, sample_class, count):
    """(uniform, MPS, class name) images of one class from the run's best finder."""
    index, name = resolve_class(sample_class, probe.pipeline)
    state = probe.restore(job.workdir, "best")
    return (probe.class_samples(state, index, count, uniform=True),
            probe.class_samples(state, index, count, uniform=False), name)


def _uniform_frechet(config, method, metric, lambda_map, fd_samples, num_synthetic,
                     sample_seed):
    """The uniform sampler's distance in the fixed metric space (independent of training)."""
    cfg = runs.derive(config, {"method": method}, lambda_map=lambda_map)
    probe = Probe(cfg, num_synthetic=num_synthetic, sample_seed=sample_seed)
    try:
        metric_probe, metric_state, real = metric
        images = probe.synthetic_images(probe.template, fd_samples)
        return frechet_of_features(real, metric_probe.features(metric_state, images))
    finally:
        probe.close()


def _curve_table(key, title, curves):
    table = tables.Table(key, title, "Epoch", list(curves), decimals=4,
                         notes=["Mean ± sample std over seeds."])
    epochs = sorted({e for per_epoch in curves.values() for e in per_epoch})
    for e in epochs:
        for label, per_epoch in curves.items():
            if e in per_epoch:
                table.add(str(e), label, per_epoch[e])
    return table


def _per_epoch(jobs, method, values_of):
    """{epoch: [value per run]} over the runs of one method; `values_of(job)` -> (epoch, v)s."""
    per_epoch = {}
    for job in jobs:
        if job.config.method == method:
            for e, v in values_of(job):
                per_epoch.setdefault(e, []).append(v)
    return per_epoch


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
    cli.check_choices(list(umap_methods) + [uniform_method])
    cli.check_choices([mps_method], runs.MPS_METHODS, "MPS methods")
    trainer = trainer or train.train_and_evaluate
    runs_dir = runs.runs_dir_of(workdir, runs_dir)
    num_epochs = int(config.num_epochs)
    feature_epochs = sorted({int(e) for e in feature_epochs if 1 <= int(e) <= num_epochs}) \
        or [num_epochs]
    fd_epochs = sorted(set(range(fd_every, num_epochs + 1, fd_every)) | {num_epochs}) \
        if fd_every > 0 else []
    metric_job, jobs, needs = _plan(config, seeds, umap_methods, uniform_method, mps_method,
                                    feature_epochs, fd_epochs, fd_space, lambda_map)
    all_jobs = ([metric_job] if metric_job else []) + jobs
    if dry_run:
        runs.run_jobs(all_jobs, runs_dir, dry_run=True)
        runs.print_plan(all_jobs)
        return {"jobs": all_jobs}
    print(f"figures: {len(all_jobs)} runs in {runs_dir}", flush=True)

    settings = {"embed_samples": int(embed_samples), "fd_samples": int(fd_samples),
                "fd_space": fd_space, "sample_seed": int(sample_seed),
                "metric": metric_job.name if metric_job else None}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    metric = _metric_space(metric_job, runs_dir, trainer, fd_samples) if metric_job else None
    num_synthetic = max(embed_samples, fd_samples, num_class_samples)
    try:
        snapshots, class_samples = _take_snapshots(
            jobs, needs, runs_dir, key, dict(settings, metric=metric), trainer,
            mps_method=mps_method, first=seeds[0], num_synthetic=num_synthetic,
            sample_seed=sample_seed, sample_class=sample_class,
            num_class_samples=num_class_samples)
        uniform_fd = None
        if fd_epochs and fd_space == "metric":
            uniform_fd = _uniform_frechet(config, uniform_method, metric, lambda_map,
                                          fd_samples, num_synthetic, sample_seed)
    finally:
        if metric is not None:
            metric[0].close()

    figures, out_tables = {}, []
    os.makedirs(workdir, exist_ok=True)
    labels = {uniform_method: f"Uniform ({tables.TABLE_LABELS[uniform_method]})",
              mps_method: f"MPS ({tables.TABLE_LABELS[mps_method]})"}
    # Fig. 6a: validation loss per epoch.
    curves = {labels[m]: _per_epoch(jobs, m, lambda job: [
        (rec["epoch"], rec["val_loss"]) for rec in runs.read_metrics(job.workdir)])
        for m in (uniform_method, mps_method)}
    figures["fig6a"] = os.path.join(workdir, "fig6a_val_loss.png")
    plots.plot_curves(figures["fig6a"], curves, "validation loss", "Validation loss (Fig. 6a)")
    out_tables.append(_curve_table("figures_val_loss", "Validation loss per epoch", curves))
    # Fig. 6b: Frechet distance per epoch.
    if fd_epochs:
        fd_curves = {}
        for m in (uniform_method, mps_method):
            if m == uniform_method and uniform_fd is not None:
                fd_curves[labels[m]] = {e: [uniform_fd] for e in fd_epochs}
            else:
                fd_curves[labels[m]] = _per_epoch(
                    jobs, m, lambda job: snapshots[job.name].frechet().items())
        figures["fig6b"] = os.path.join(workdir, "fig6b_frechet.png")
        plots.plot_curves(figures["fig6b"], fd_curves, f"Fréchet distance ({fd_space} features)",
                          "Fréchet distance to D (Fig. 6b)")
        out_tables.append(_curve_table(
            "figures_frechet", f"Fréchet distance per epoch ({fd_space} feature space)",
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
    plots.plot_embeddings(figures["fig5"], panels, list(umap_methods), feature_epochs, embedding)
    # Fig. 7: samples of one class.
    if class_samples is not None:
        uniform, mps, name = class_samples
        figures["fig7"] = os.path.join(workdir, "fig7_samples.png")
        plots.plot_samples(figures["fig7"], uniform, mps, f"Synthetic samples ({name})")
    footer = "## Figures\n\n" + "\n".join(
        f"![{k}]({os.path.basename(p)})" for k, p in figures.items()) + "\n"
    paths = tables.write_report(workdir, "figures", out_tables, all_jobs, header="Figures 5-7",
                                footer=footer)
    return {"figures": figures, "tables": out_tables, "paths": paths, "jobs": all_jobs}


def define_flags(fv):
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
    kwargs = cli.common_kwargs(fv)
    kwargs.update(umap_methods=cli.parse_list(fv.umap_methods),
                  uniform_method=fv.uniform_method, mps_method=fv.mps_method,
                  feature_epochs=cli.parse_list(fv.feature_epochs, int),
                  fd_every=fv.fd_every, fd_space=fv.fd_space, fd_samples=fv.fd_samples,
                  embed_samples=fv.embed_samples, embedding=fv.embedding,
                  sample_class=fv.sample_class, num_class_samples=fv.num_class_samples,
                  sample_seed=fv.sample_seed)
    return kwargs


if __name__ == "__main__":
    cli.main(sys.modules[__name__])
