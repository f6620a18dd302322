"""The classifier's training run: setup from a config, the epoch loop, evaluation, resumption.

The steps it runs are `methods` (built on `classifier`); it writes through `checkpoints`,
`run_log` and `results`.
"""
import contextlib
import functools
import os
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mgr_jax.classifier import create_train_state, eval_step
from mgr_jax.data import loader
from mgr_jax.errors import Interrupted, TrainingDiverged, UserError
from mgr_jax.run import (
    build,
    checkpoints,
    config_lib,
    multihost,
    pretrained,
    results,
    sharding,
    workdir as workdir_lib,
)
from mgr_jax.run.run_log import RunLog

__all__ = ["Setup", "TrainingDiverged", "evaluate", "restore_state", "setup",
           "train_and_evaluate"]


def evaluate(eval_fn, state, pipeline, split):
    """Top-1 (%) and mean loss over a whole split; one host sync at the end.

    TrainingDiverged when the loss is NaN/inf (NaN weights or BatchNorm statistics would
    otherwise give a chance-level accuracy and no error)."""
    sums = None
    for batch in pipeline.eval_batches(split):
        out = eval_fn(state, batch)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    loss = float(sums["loss"]) / float(sums["count"])
    if not np.isfinite(loss):
        raise TrainingDiverged(int(state.step), what=f"the {split} loss")
    return 100.0 * float(sums["correct"]) / float(sums["count"]), loss


# The metric named when several became NaN/inf at one step (the cause before its effects).
_CAUSES_FIRST = ("syn", "meta_loss", "hypergrad_norm", "kl", "ce", "loss")


def _check_finite(metrics_so_far, first_step):
    """TrainingDiverged at the first step whose metrics (every float value) hold NaN/inf."""
    for i, metrics in enumerate(jax.device_get(metrics_so_far)):
        bad = sorted((k for k, v in metrics.items() if not np.isfinite(v)),
                     key=lambda k: (_CAUSES_FIRST.index(k) if k in _CAUSES_FIRST else 99, k))
        if bad:
            what = "the loss" if bad[0] == "loss" else f"the metric {bad[0]}"
            if bad[0] == "syn":
                what = "the synthetic loss syn (a generator giving NaN/inf images does it)"
            raise TrainingDiverged(first_step + i, what=what)


class Setup(NamedTuple):
    """What a run starts from (`setup`)."""
    pipeline: Any  # the data pipeline (data.loader)
    model: Any  # the classifier module
    method: Any  # the methods.Method
    state: Any  # the initial TrainState
    loop_rng: Any  # the key every step folds its number into


def setup(config, mesh=None, model=None):
    """The `Setup` (pipeline, model, method, initial state, loop key) of a config, checked by
    `config_lib.validate` before; writes nothing.

    With a `mesh`, the state is replicated over it and synthetic batches are split over it;
    the pipeline then yields this process's rows of every batch (`sharding.process_shard`).
    `model` (a Flax module following `contract`, built for the dataset's classes) replaces
    the config's ResNet; `config.model.init_checkpoint` must then be empty.
    """
    if mesh is not None:
        sharding.check_divisible(config, mesh)
    pipeline = loader.create_pipeline(
        config, shard=(0, 1) if mesh is None else sharding.process_shard(mesh))
    if model is None:
        model = build.create_model(config, pipeline.num_classes)
        init_variables = pretrained.load_init_checkpoint(config, model, pipeline.num_classes)
    elif config.model.init_checkpoint:
        raise UserError("model.init_checkpoint is for the config's ResNet; leave it empty "
                        "when setup is given its own model")
    else:
        init_variables = None
    lr_fn = build.create_learning_rate_fn(config, pipeline.steps_per_epoch)
    tx = build.create_optimizer(config, lr_fn)
    method = build.build(config, model=model, tx=tx, learning_rate_fn=lr_fn,
                         num_classes=pipeline.num_classes, image_size=pipeline.image_size,
                         data_sharding=None if mesh is None else sharding.data_sharded(mesh))
    init_rng, meta_rng, loop_rng = jax.random.split(jax.random.key(config.seed), 3)
    state = create_train_state(init_rng, model, tx, pipeline.image_size, init_variables,
                               meta=method.init_meta(meta_rng))
    if mesh is not None:
        state = sharding.replicate(state, mesh)
        method = method.with_frozen(sharding.replicate(method.frozen, mesh))
    return Setup(pipeline, model, method, state, loop_rng)


def restore_state(config, workdir, which="latest"):
    """The TrainState of a run's latest (or best-validation) checkpoint."""
    state = setup(config).state
    ckpt = checkpoints.RunCheckpoints(workdir)
    try:
        restored = ckpt.restore_latest(state, which=which)
    finally:
        ckpt.close()
    if restored is None:
        raise UserError(f"{workdir} has no {which} checkpoint")
    return restored[0]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       max_epochs_this_run=None, stop=None):
    """Train per the config, keep the best-validation epoch, return the results dict.

    Re-running on the same workdir resumes from the latest good checkpoint.
    `max_epochs_this_run` stops early after that many epochs (a resumable pause, as a time
    limit would). `stop` (a `threading.Event`, set by a signal handler, say) ends the run
    between two steps with `errors.Interrupted`, the saves under way finished: the run resumes
    from its last saved epoch. Everything is checked before anything is written: the config,
    the workdir (`workdir.inspect`), what the batch sizes need of memory (on a GPU or TPU, the
    compiler's memory analysis of the step), the data, weights and generator (`setup`); the
    run then holds the workdir's lock until it returns.

    In a multi-host job (`multihost.initialize` first) every process calls it: a check that
    fails on one process stops all of them (`multihost.together`); process 0 takes the lock
    and writes config.json, metrics.jsonl, TensorBoard events and results.json, and orbax
    writes the checkpoints collectively.
    """
    with multihost.together("the checks before the run"):
        config_lib.validate(config)
        config_dict = config_lib.to_dict(config)
        workdir_lib.inspect(workdir, config_dict)
        mesh = sharding.create_mesh()
        config_lib.check_memory(config, list(mesh.devices.flat))
        pipeline, model, method, state, loop_rng = setup(config, mesh)
        if mesh.devices.flat[0].platform != "cpu":  # the compiler's figure, where it is exact
            config_lib.check_compiled_memory(
                config, _step_memory(config, method, state, loop_rng, pipeline, mesh),
                mesh.devices.flat[0])
    # Nothing is written before here: bad input leaves the workdir as it was.
    with contextlib.ExitStack() as stack:
        with multihost.together("taking the workdir's lock"):
            stack.enter_context(workdir_lib.RunLock(workdir, config_dict,
                                                    enabled=multihost.is_primary()))
        return _run(config, workdir, max_epochs_this_run, mesh, pipeline, model, method, state,
                    loop_rng, stop)


def _step_memory(config, method, state, loop_rng, pipeline, mesh):
    """`memory_analysis()` of the (meta) training step compiled for the run's shapes, before
    any batch is read (the persistent compilation cache gives the loop the same program)."""
    size = pipeline.image_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
    b, split = config.batch_size, sharding.data_sharded(mesh)
    image = jax.ShapeDtypeStruct((b, height, width, 3), jnp.float32, sharding=split)
    label = jax.ShapeDtypeStruct((b,), jnp.int32, sharding=split)
    batch = {"image": image, "label": label}
    if method.needs_val:
        batch.update(val_image=image, val_label=label)
    replicated = sharding.replicated(mesh)  # jitted as the loop jits it (`_run`)
    step = method.jit(donate_argnums=(0,), out_shardings=(replicated, replicated)).train_step
    compiled = step.lower(state, batch, loop_rng, method.frozen).compile()
    return compiled.memory_analysis()


def _warn(line):
    if multihost.is_primary():
        print(line, file=sys.stderr, flush=True)


def _say(line):
    if multihost.is_primary():
        print(line, flush=True)


def _resume(ckpt, state, workdir):
    """(state, loop) to start from: the newest good checkpoint's, or a fresh loop."""
    loop = {"epoch": 0, "best_epoch": 0, "best_val_top1": -1.0, "best_test_top1": None,
            "elapsed_s": 0.0, "steps": 0}
    restored = ckpt.resume(state, report=_warn)
    if restored is not None:
        state, loop, _ = restored
        _say(f"resuming {workdir} from epoch {loop['epoch']}")
    return state, loop


def _diverged(error, workdir, saved_epoch, epoch):
    """TrainingDiverged(step, what is left) for `main` to print."""
    if saved_epoch:
        left = (f"the last good checkpoint, epoch {saved_epoch}, is in "
                f"{os.path.join(workdir, 'checkpoints', 'latest')}")
    else:
        left = f"no checkpoint was saved (it diverged in epoch {epoch}, before the first one)"
    return TrainingDiverged(error.args[0], left, what=error.what)


def _run(config, workdir, max_epochs_this_run, mesh, pipeline, model, method, state, loop_rng,
         stop):
    """The epoch loop of `train_and_evaluate`, under the workdir's lock."""
    ckpt = checkpoints.RunCheckpoints(workdir, keep_best=config.keep_best_checkpoint)
    log = None
    try:
        state, loop = _resume(ckpt, state, workdir)
        last_epoch = loop["epoch"]
        log = RunLog(workdir, keep=lambda record: record.get("epoch", 0) <= last_epoch,
                     enabled=multihost.is_primary())
        replicated = sharding.replicated(mesh)
        # One program per step kind (the meta step and, with mps.update_every > 1, the
        # steps between), each compiled once; the loop picks one by step number.
        jitted = method.jit(donate_argnums=(0,), out_shardings=(replicated, replicated))
        jit_eval = jax.jit(functools.partial(eval_step, model=model), out_shardings=replicated)
        eval_fn = lambda s, batch: jit_eval(s, sharding.shard_batch(batch, mesh))  # noqa: E731
        last = config.num_epochs if max_epochs_this_run is None else min(
            config.num_epochs, loop["epoch"] + max_epochs_this_run)
        progress = {"saved": loop["epoch"], "epoch": loop["epoch"]}
        try:
            for epoch in range(loop["epoch"] + 1, last + 1):
                progress["epoch"] = epoch
                state = _epoch(config, epoch, jitted, eval_fn, state, pipeline, mesh, loop_rng,
                               log, loop, stop)
                ckpt.save(epoch, state, loop, loop["best_epoch"] == epoch)
                progress["saved"] = epoch
        except TrainingDiverged as e:
            raise _diverged(e, workdir, progress["saved"], progress["epoch"]) from None
        except Interrupted:
            raise Interrupted(progress["saved"]) from None
    finally:
        pipeline.close()  # input workers end here, however the loop ended
        ckpt.close()
        if log is not None:
            log.close()
    if loop["epoch"] < config.num_epochs:
        _say(f"paused after epoch {loop['epoch']}; run again to resume")
        return None
    return results.write_results(workdir, config, pipeline, loop, write=multihost.is_primary())


def _epoch(config, epoch, method, eval_fn, state, pipeline, mesh, loop_rng, log, loop,
           stop=None):
    """Train one epoch, evaluate it, log it; updates `loop` and returns the new state."""
    t0 = time.time()
    state, train_metrics = _train_epoch(config, method, state, pipeline, epoch, mesh, loop_rng,
                                        log, stop)
    steps_per_s = pipeline.steps_per_epoch / max(time.time() - t0, 1e-9)
    val_top1, val_loss = evaluate(eval_fn, state, pipeline, "val")
    is_best = val_top1 > loop["best_val_top1"]
    if is_best:  # test only when validation improves: the protocol reports that epoch.
        test_top1, _ = evaluate(eval_fn, state, pipeline, "test")
        loop.update(best_epoch=epoch, best_val_top1=val_top1, best_test_top1=test_top1)
    seconds = time.time() - t0
    loop.update(epoch=epoch, elapsed_s=loop["elapsed_s"] + seconds,
                steps=loop["steps"] + pipeline.steps_per_epoch)
    log.write("epoch", int(state.step),
              dict(train_metrics, val_top1=val_top1, val_loss=val_loss,
                   **({"test_top1": loop["best_test_top1"]} if is_best else {})),
              epoch=epoch)
    log.epoch_line(epoch, config.num_epochs, train_metrics, val_top1,
                   loop["best_test_top1"] if is_best else None, steps_per_s, seconds, is_best)
    return state


def _means(sums, counts):
    """Per-key means on the host: each metric over the steps that logged it (the meta steps
    log more keys than the steps between them)."""
    out = {}
    for k, v in jax.device_get(sums).items():
        v = np.asarray(v)  # divided in its own dtype, as the device would
        out[k] = float(v / v.dtype.type(counts[k]) if v.dtype.kind == "f" else v / counts[k])
    return out


def _train_epoch(config, method, state, pipeline, epoch, mesh, loop_rng, log, stop=None):
    """Run one epoch of `method` (its steps jitted); host syncs only every `log_every_steps`
    steps and at the end. The step number comes from a host count, not from the state."""
    pending, sums, counts, count = [], {}, {}, 0
    first = int(state.step)
    for batch in pipeline.train_batches(epoch, with_val=method.needs_val):
        batch = sharding.shard_batch(batch, mesh)
        step_fn = method.step_for(first + count)
        state, metrics = step_fn(state, batch, loop_rng, method.frozen)  # folds in state.step.
        pending.append(metrics)
        for k, v in metrics.items():
            sums[k] = v if k not in sums else jnp.add(sums[k], v)
            counts[k] = counts.get(k, 0) + 1
        count += 1
        if stop is not None and stop.is_set():
            raise Interrupted()
        if len(pending) == config.log_every_steps:
            _check_finite(pending, first + count - len(pending))
            log.write("train", first + count, _means(sums, counts), epoch=epoch)
            pending = []
    if pending:
        _check_finite(pending, first + count - len(pending))
    return state, _means(sums, counts)
