"""Train a conditional StyleGAN2-ADA generator in JAX and export it for MGR.

    python -m mgr_jax.gan.train --config=configs/generator/digits.py --workdir=runs/gen \
        [--config.total_kimg=50] [--max_kimg_this_run=10]

The workdir receives config.json, metrics.jsonl (progress records and, per snapshot, the
classifier-space label accuracy and Frechet distance of `mgr_jax.gan.metrics`),
samples_<kimg>.png (one row per class), orbax checkpoints in checkpoints/latest, the metric
classifier in metric_classifier/ (trained once, reused), and at the end generator/ (G_ema as
`converters.stylegan2_ada.save_converted` writes it: `mgr_jax.generators.stylegan2_ada.load`
reads it) and results.json. Re-running on the workdir resumes from the latest checkpoint and
ends bit-identical to an uninterrupted run; a workdir with another config is refused; bad
input is one line on stderr and exit status 2 before anything is written.
"""
import functools
import math
import os
import sys
import time
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from converters import stylegan2_ada as sg_converter
from mgr_jax import files
from mgr_jax.data import loader, protocol
from mgr_jax.errors import TrainingDiverged, UserError
from mgr_jax.gan import diffaugment, metrics as gan_metrics, steps as gan_steps
from mgr_jax.models.stylegan2 import discriminator as stylegan2_disc
from mgr_jax.run import checkpoints, compile_cache, config_lib
from mgr_jax.run import workdir as workdir_lib
from mgr_jax.run.run_log import format_eta, RunLog

# Fields that may change between a run and its resumption without changing its results.
RESUMABLE_CHANGES = ("total_kimg", "log_every_kimg")


def _require(ok, message):
    if not ok:
        raise UserError(message)


def validate(config):
    """Raise UserError for the first bad value of a generator config."""
    _require(config.total_kimg > 0, f"total_kimg={config.total_kimg} must be positive")
    _require(config.batch_size >= 1, f"batch_size={config.batch_size} must be positive")
    g, d, loss = config.generator, config.discriminator, config.loss
    res = g.resolution
    _require(res >= 4 and 2 ** int(round(math.log2(res))) == res,
             f"generator.resolution={res} must be a power of two >= 4")
    _require(res == config.data.image_size,
             f"generator.resolution={res} must equal data.image_size={config.data.image_size} "
             "(G is trained on the images as the classifier sees them)")
    _require(g.img_channels == 3, f"generator.img_channels={g.img_channels}: the data is RGB, "
             "use 3")
    for name, value in (("generator.z_dim", g.z_dim), ("generator.w_dim", g.w_dim),
                        ("generator.channel_base", g.channel_base),
                        ("generator.channel_max", g.channel_max),
                        ("discriminator.channel_base", d.channel_base),
                        ("discriminator.channel_max", d.channel_max)):
        _require(value >= 1, f"{name}={value} must be a positive integer")
    _require(g.mapping_layers >= 1, f"generator.mapping_layers={g.mapping_layers} must be >= 1")
    _require(g.architecture in ("orig", "skip", "resnet"),
             f"generator.architecture={g.architecture!r} is not valid; choose orig, skip, resnet")
    _require(d.architecture in stylegan2_disc.ARCHITECTURES,
             f"discriminator.architecture={d.architecture!r} is not valid; choose one of "
             f"{list(stylegan2_disc.ARCHITECTURES)}")
    group = min(d.mbstd_group_size, config.batch_size) if d.mbstd_group_size else 1
    _require(d.mbstd_num_channels == 0 or config.batch_size % max(group, 1) == 0,
             f"batch_size={config.batch_size} must be divisible by "
             f"discriminator.mbstd_group_size={d.mbstd_group_size}")
    opt = config.optimizer
    _require(opt.g_lr > 0 and opt.d_lr > 0, "optimizer.g_lr and optimizer.d_lr must be positive")
    _require(len(opt.betas) == 2 and all(0 <= b < 1 for b in opt.betas),
             f"optimizer.betas={tuple(opt.betas)} must be two values in [0, 1)")
    _require(loss.r1_gamma >= 0, f"loss.r1_gamma={loss.r1_gamma} must be non-negative")
    _require(loss.r1_interval >= 1, f"loss.r1_interval={loss.r1_interval} must be >= 1")
    _require(loss.pl_interval >= 1, f"loss.pl_interval={loss.pl_interval} must be >= 1")
    _require(loss.pl_weight >= 0, f"loss.pl_weight={loss.pl_weight} must be non-negative")
    _require(0 <= loss.style_mixing_prob <= 1,
             f"loss.style_mixing_prob={loss.style_mixing_prob} must be in [0, 1]")
    _require(config.ema_kimg > 0, f"ema_kimg={config.ema_kimg} must be positive")
    _require(config.ema_rampup >= 0, f"ema_rampup={config.ema_rampup} must be >= 0 (0 = off)")
    try:
        diffaugment.parse_policy(config.augment.policy)
    except ValueError as e:
        raise UserError(f"augment.policy={config.augment.policy!r}: {e}") from None
    for name in ("log_every_kimg", "snapshot_every_kimg"):
        _require(config[name] > 0, f"{name}={config[name]} must be positive")
    _require(config.metric.num_samples >= 2,
             f"metric.num_samples={config.metric.num_samples} must be at least 2")
    _require(config.samples.cols >= 1 and config.samples.zoom >= 1,
             "samples.cols and samples.zoom must be positive integers")
    # The data fields are the classifier's: the classifier config's checks cover them.
    config_lib.validate(gan_metrics.classifier_config(config))


# The datasets the classifier's pipeline holds in memory (memory.ArrayPipeline).
IN_MEMORY = ("digits", "fashion_mnist")


def load_real_data(config):
    """(images in [-1, 1] (N, R, R, 3), int32 labels (N,), num_classes) of D, the training
    part of the protocol split, the images the classifier sees before normalisation."""
    if config.data.name not in IN_MEMORY:
        raise UserError(f"data.name={config.data.name!r}: the generator trainer needs an "
                        f"in-memory dataset ({', '.join(IN_MEMORY)})")
    pipeline = loader.create_pipeline(config)
    train = pipeline.splits["train"]
    images01 = train.images
    return np.clip(images01 * 2.0 - 1.0, -1.0, 1.0).astype(np.float32), train.labels, \
        pipeline.num_classes, pipeline


class RealBatches:
    """Batch of step s: epoch-wise shuffles of D fixed by (seed, epoch), no replacement."""

    def __init__(self, images, labels, batch_size, seed):
        self.images, self.labels = images, labels
        self.batch_size, self.seed = batch_size, seed
        self.steps_per_epoch = max(1, len(labels) // batch_size)
        self._epoch, self._order = None, None

    def __call__(self, step):
        epoch = step // self.steps_per_epoch + 1
        if epoch != self._epoch:
            self._order = protocol.epoch_order(len(self.labels), self.batch_size,
                                                     self.seed, epoch)
            self._epoch = epoch
        idx = self._order[step % self.steps_per_epoch]
        return {"image": self.images[idx], "label": self.labels[idx]}


@functools.lru_cache(maxsize=4)
def _grid_fn(G):
    return jax.jit(lambda v, z, c: G.apply(v, z, c, noise_mode="const"))


def sample_grid(G, variables, key, cols, gap=1):
    """uint8 grid: row r = class r (4 rows when unconditional), `cols` samples per row,
    cells separated by `gap` mid-grey pixels (digits fill their frame)."""
    rows = G.c_dim if G.c_dim > 0 else 4
    z = jax.random.normal(key, (rows * cols, G.z_dim))
    c = jax.nn.one_hot(np.repeat(np.arange(rows), cols), G.c_dim) if G.c_dim > 0 else None
    img = np.asarray(_grid_fn(G)(variables, z, c))
    img = np.clip(np.rint((img + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return files.tile_grid(img, cols, gap=gap, fill=128)


def _write_grid(path, G, variables, config):
    """One row per class of G_ema samples (fixed z), nearest-upscaled by samples.zoom."""
    grid = sample_grid(G, variables, jax.random.key(config.seed + 12345), config.samples.cols)
    zoom = config.samples.zoom
    files.write_png(path, np.repeat(np.repeat(grid, zoom, axis=0), zoom, axis=1))


def _mean_metrics(records):
    """Mean of each metric over the steps that produced it (R1 only on R1 steps)."""
    values = {}
    for r in jax.device_get(records):
        for k, v in r.items():
            values.setdefault(k, []).append(float(v))
    return {k: float(np.mean(v)) for k, v in values.items()}


class Setup(NamedTuple):
    """What a generator run starts from (`setup`)."""
    G: Any  # the generator module
    D: Any  # the discriminator module
    state: Any  # the initial GAN state (both networks, their optimisers, G's EMA)
    steps: Any  # {step kind: jitted step}
    batches: Any  # step -> the real batch (RealBatches)
    pipeline: Any  # the classifier's data pipeline the real images come from


def setup(config):
    """The `Setup` of a generator config (models, initial state, jitted steps, data); writes
    nothing."""
    images, labels, num_classes, pipeline = load_real_data(config)
    G, D, g_tx, d_tx, steps = gan_steps.build(config, num_classes)
    state = gan_steps.create_state(config, G, D, g_tx, d_tx)
    batches = RealBatches(images, labels, config.batch_size, config.seed)
    return Setup(G, D, state, steps, batches, pipeline)


def train_generator(config, workdir, max_kimg_this_run=None):
    """Train per `config` into `workdir` (resuming it); returns results or None when paused.

    `max_kimg_this_run` pauses (resumably) at the first snapshot at or after that many kimg
    were trained in this call.
    """
    validate(config)
    config_dict = config_lib.to_dict(config)
    workdir_lib.inspect(workdir, config_dict, resumable=RESUMABLE_CHANGES)
    G, D, state, steps, batches, pipeline = setup(config)
    batch_size = config.batch_size
    total_steps = gan_steps.steps_for_kimg(config.total_kimg, batch_size)
    snap_steps = max(1, gan_steps.steps_for_kimg(config.snapshot_every_kimg, batch_size))
    log_steps = max(1, gan_steps.steps_for_kimg(config.log_every_kimg, batch_size))
    # Nothing is written before here: bad input leaves the workdir as it was. The lock (the
    # classifier run's) keeps a second run off this workdir and creates or checks config.json.
    with workdir_lib.RunLock(workdir, config_dict, resumable=RESUMABLE_CHANGES):
        metrics = _metric_fn(config, workdir, pipeline) if config.metric.enabled else None
        ckpt = checkpoints.RunCheckpoints(workdir, keep_best=False)
        loop = {"step": 0, "elapsed_s": 0.0}
        restored = ckpt.restore_latest(state)
        if restored is not None:
            state, loop = restored
            print(f"resuming {workdir} from kimg {gan_steps.kimg(loop['step'], batch_size):.1f}",
                  flush=True)
        last_step, fresh = loop["step"], restored is None  # fresh: a killed first run's records go
        log = RunLog(workdir, keep=lambda record: not fresh and record["step"] <= last_step,
                     tensorboard=False)
        rng = jax.random.key(config.seed)
        step = loop["step"]
        if restored is None:  # the initial G, for reference
            _snapshot(workdir, config, G, state, 0, log, metrics)
        stop = total_steps
        if max_kimg_this_run is not None:
            wanted = step + gan_steps.steps_for_kimg(max_kimg_this_run, batch_size)
            stop = min(total_steps, -(-wanted // snap_steps) * snap_steps)
        pending, t_log, step_log = [], time.time(), step
        t_start = time.time() - loop["elapsed_s"]
        try:
            while step < stop:
                kind = gan_steps.step_kind(step, config)
                state, out = steps[kind](state, batches(step), rng)
                pending.append(out)
                step += 1
                if step % log_steps == 0 or step % snap_steps == 0 or step == stop:
                    values = _mean_metrics(pending)
                    bad = [k for k, v in values.items() if not math.isfinite(v)]
                    if bad:
                        raise TrainingDiverged(step)
                    rate = (step - step_log) / max(time.time() - t_log, 1e-9)
                    values["it_per_s"] = rate
                    log.write("train", step, values, kimg=round(gan_steps.kimg(step, batch_size), 4))
                    _progress_line(step, total_steps, batch_size, values, rate)
                    pending, t_log, step_log = [], time.time(), step
                if step % snap_steps == 0 or step == stop:
                    loop = {"step": step, "elapsed_s": time.time() - t_start}
                    _snapshot(workdir, config, G, state, step, log, metrics)
                    ckpt.save(step, state, loop, is_best=False)
        finally:
            ckpt.close()
        if step < total_steps:
            print(f"paused at kimg {gan_steps.kimg(step, batch_size):.1f}; run again to resume",
                  flush=True)
            return None
        return _finish(workdir, config, G, state, loop, log)


def _metric_fn(config, workdir, pipeline):
    """metrics(G, variables) -> dict, with the classifier trained once (or reused)."""
    cls_config = gan_metrics.classifier_config(config)
    directory = config.metric.classifier_dir or os.path.join(workdir, "metric_classifier")
    gan_metrics.ensure_classifier(cls_config, directory)
    scorer = gan_metrics.ClassifierMetrics(cls_config, directory,
                                           pipeline.splits["train"].images,
                                           pipeline.num_classes, config.eval_batch_size)
    key = jax.random.key(config.seed + 54321)
    return lambda G, variables: scorer.evaluate(G, variables, key, config.metric.num_samples)


def _progress_line(step, total_steps, batch_size, values, rate):
    kimg, total = gan_steps.kimg(step, batch_size), gan_steps.kimg(total_steps, batch_size)
    r1 = f"  R1 {values['r1_penalty']:.4f}" if "r1_penalty" in values else ""
    pl = f"  PL {values['pl_penalty']:.4f}" if "pl_penalty" in values else ""
    print(f"kimg {kimg:7.2f}/{total:.1f}  G {values['g_loss']:.3f}  D {values['d_loss']:.3f}  "
          f"D(real) {values['real_score']:+.2f}  D(fake) {values['fake_score']:+.2f}{r1}{pl}  "
          f"{rate:.2f} it/s  eta {format_eta((total_steps - step) / max(rate, 1e-9))}",
          flush=True)


def _snapshot(workdir, config, G, state, step, log, metrics):
    """Sample grid and (when enabled) the classifier metrics of G_ema at `step`."""
    kimg = gan_steps.kimg(step, config.batch_size)
    ema = jax.device_get(state.ema)
    _write_grid(os.path.join(workdir, f"samples_{kimg:08.3f}.png"), G, ema, config)
    if metrics is not None:
        values = metrics(G, ema)
        log.write("snapshot", step, values, kimg=round(kimg, 4))
        print("snapshot kimg {:.2f}: {}".format(kimg, "  ".join(
            f"{k} {v:.3f}" for k, v in values.items())), flush=True)


def _finish(workdir, config, G, state, loop, log):
    """Export G_ema to workdir/generator and write results.json."""
    ema = jax.device_get(state.ema)
    kimg = gan_steps.kimg(loop["step"], config.batch_size)
    gen_dir = os.path.join(workdir, "generator")
    sg_converter.save_converted(gen_dir, G, ema, f"mgr_jax.gan.train, {kimg:.3f} kimg")
    _write_grid(os.path.join(gen_dir, "samples.png"), G, ema, config)
    snapshots = log.records("snapshot")
    results = {"kimg": round(kimg, 3), "steps": int(loop["step"]),
               "wall_clock_s": round(float(loop["elapsed_s"]), 1),
               "generator": os.path.abspath(gen_dir),
               "num_params": int(sum(np.size(x) for x in jax.tree.leaves(ema["params"]))),
               "final": {k: v for k, v in (snapshots[-1] if snapshots else {}).items()
                         if k not in ("kind",)}}
    files.write_json(os.path.join(workdir, "results.json"), results)
    print(f"exported G_ema ({results['num_params']} params, {kimg:.1f} kimg) to {gen_dir}",
          flush=True)
    return results


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
    FLAGS = flags.FLAGS
    try:
        train_generator(FLAGS.config, FLAGS.workdir, FLAGS.max_kimg_this_run)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as e:
        print(f"error: the losses became NaN/inf by iteration {e.args[0]}; stopped. The last "
              f"good checkpoint is in {FLAGS.workdir}/checkpoints/latest", file=sys.stderr)
        sys.exit(3)


def _define_flags():
    config_flags.DEFINE_config_file("config", None, "Path of a get_config() file.",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Run directory (created; re-using it resumes).")
    flags.DEFINE_float("max_kimg_this_run", None,
                       "Pause (resumably) at the first snapshot after this many kimg.")
    flags.mark_flags_as_required(["config", "workdir"])


def run():
    """The command line: python -m mgr_jax.gan.train --config=... --workdir=..."""
    _define_flags()
    compile_cache.enable()
    app.run(main)


if __name__ == "__main__":
    run()
