"""The input pipeline of the image datasets: grain over random-access sources of encoded images.

Implements `mgr_jax.data.loader.Pipeline`, as `memory.ArrayPipeline` does; images are decoded
to uint8 and normalised by `protocol.normalize` when a batch is made.

Splits (SPEC training protocol): the official training split, in canonical order (sorted
by file key), is cut into D and D_val by `protocol.protocol_splits` with
`data.split_seed`; `data.subset_fraction` then samples D. The same seed gives the same
split on any machine: it depends only on the official file list and numpy's PCG64.

Training batches: one grain element per batch (global step = epoch * steps_per_epoch +
step). The batch's examples are `protocol.epoch_order(len(D), B, config.seed, epoch)`,
as the in-memory pipeline; each image is decoded, RandomResizedCrop'ed, flipped and
augmented (`data.augment`) with its own Generator seeded by (seed, epoch, step, position),
so batches do not depend on the number of workers or on timing. `data.num_workers` processes
(grain `mp_prefetch`) make batches ahead of the train step; one stream of workers serves
all epochs from the first `train_batches` call on (workers start once, not per epoch). With
`with_val`, each batch also carries a D_val batch (eval transform: D_val is validation data,
the MPS outer loss sees it unaugmented) from `epoch_order(len(D_val), B, seed + 7919, epoch)`.

With `shard=(i, n)` (a process of a multi-host run) only part i of n of every training and
evaluation batch is decoded and yielded: the rows this process feeds to its devices.

Evaluation batches (resize + centre crop) are made by `data.num_threads` threads in the main
process (PIL releases the GIL while decoding and resampling), the last batch zero-padded
and masked.
"""
import atexit
import os
import weakref

import grain

try:  # grain internals (may move between releases): only used to flush shared memory at exit
    from grain._src.python.ipc import shared_memory_array
except ImportError:
    shared_memory_array = None
import numpy as np
from absl import flags

from mgr_jax.data import protocol, real_augment, transforms
from mgr_jax.data.protocol import epoch_order, protocol_splits


def _decode(source, i):
    return transforms.decode(source.read(i), source.describe(i))


class TrainBatch:
    """grain map: global step -> one training batch dict (picklable, runs in workers)."""

    def __init__(self, source, d_idx, val_idx, *, batch_size, seed, steps_per_epoch,
                 image_size, augment, crop_fraction, with_val, rows):
        self.source, self.d_idx, self.val_idx, self.rows = source, d_idx, val_idx, rows
        self.batch_size, self.seed, self.steps_per_epoch = batch_size, seed, steps_per_epoch
        self.image_size, self.augment, self.crop_fraction = image_size, augment, crop_fraction
        self.with_val = with_val
        self._orders = {}

    def orders(self, epoch):
        if epoch not in self._orders:
            self._orders = {epoch: (
                epoch_order(len(self.d_idx), self.batch_size, self.seed, epoch),
                epoch_order(len(self.val_idx), self.batch_size,
                            self.seed + protocol.VAL_ORDER_SEED_OFFSET, epoch))}
        return self._orders[epoch]

    def train_image(self, src_index, rng):
        image = _decode(self.source, src_index)
        image = transforms.train_transform(image, self.image_size, rng)
        augment = real_augment.get(self.augment)
        if augment is not None:
            image = augment(image, rng)
        return np.asarray(image, np.uint8)

    def eval_image(self, src_index):
        image = _decode(self.source, src_index)
        return np.asarray(transforms.eval_transform(image, self.image_size, self.crop_fraction),
                          np.uint8)

    def __call__(self, global_step):
        epoch, step = divmod(int(global_step), self.steps_per_epoch)
        order, val_order = self.orders(epoch)
        src = self.d_idx[order[step][self.rows]]  # this process's rows only
        images = np.stack([
            self.train_image(i, np.random.default_rng([self.seed, epoch, step, k]))
            for k, i in zip(range(self.rows.start, self.rows.stop), src)])
        batch = {"image": protocol.normalize(images),
                 "label": self.source.labels[src].astype(np.int32)}
        if self.with_val:
            val = self.val_idx[val_order[step % len(val_order)][self.rows]]
            batch["val_image"] = protocol.normalize(
                np.stack([self.eval_image(i) for i in val]))
            batch["val_label"] = self.source.labels[val].astype(np.int32)
        return batch


class EvalBatch:
    """grain map: batch number -> a padded, masked evaluation batch of one split (`rows`:
    this process's rows of it)."""

    def __init__(self, source, indices, *, batch_size, image_size, crop_fraction, rows):
        self.source, self.indices, self.batch_size = source, indices, batch_size
        self.image_size, self.crop_fraction, self.rows = image_size, crop_fraction, rows

    def __call__(self, b):
        start = b * self.batch_size
        idx = self.indices[start + self.rows.start:start + self.rows.stop]
        n, bs, s = len(idx), self.rows.stop - self.rows.start, self.image_size
        images = np.zeros((bs, s, s, 3), np.uint8)
        for k, i in enumerate(idx):
            image = _decode(self.source, i)
            images[k] = np.asarray(transforms.eval_transform(image, s, self.crop_fraction))
        labels = np.zeros(bs, np.int32)
        labels[:n] = self.source.labels[idx]
        mask = np.zeros(bs, np.float32)
        mask[:n] = 1.0
        out = protocol.normalize(images)
        out[n:] = 0.0  # padding is zeros, as the in-memory pipeline's.
        return {"image": out, "label": labels, "mask": mask}


_LIVE_STREAMS = weakref.WeakSet()


@atexit.register
def _close_live_streams():
    # Stop workers and free prefetched shared-memory batches before interpreter teardown
    # (a run paused or stopped between epochs leaves its stream open).
    for stream in list(_LIVE_STREAMS):
        stream.close()
    # grain unlinks the shared memory of delivered batches on one background thread; wait
    # for the deletions queued so far, or exit leaves the last few segments to Python's
    # resource tracker (which frees them but warns of "leaked shared_memory objects").
    try:
        pool = shared_memory_array.SharedMemoryArray._del_thread_pool  # noqa: SLF001
        if pool is not None:
            pool.apply(int)  # runs after the deletions queued before it.
    except Exception:  # noqa: BLE001 (grain internals may change; the warning is harmless)
        pass


class _Stream:
    """A live iterator of training batches covering epochs first..last (one worker pool)."""

    def __init__(self, iterator, first, last, with_val):
        self.iterator, self.next_epoch, self.last, self.with_val = iterator, first, last, with_val
        _LIVE_STREAMS.add(self)

    def close(self):
        close = getattr(self.iterator, "close", None)
        if close is not None:
            close()
        self.iterator = None


# The resource tracker's warning about the shared memory of batches prefetched but never
# delivered (a run stopped mid-epoch); it frees them itself. A PYTHONWARNINGS filter, so that
# the tracker process (started later, inheriting the environment) applies it.
_TRACKER_FILTER = "ignore:resource_tracker:UserWarning"


def _quiet_resource_tracker():
    current = os.environ.get("PYTHONWARNINGS", "")
    if _TRACKER_FILTER not in current.split(","):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [current, _TRACKER_FILTER]))


def _ensure_absl_flags_parsed():
    # grain's worker processes read an absl flag; outside an absl app (tests, notebooks,
    # library use) flags are unparsed and reading one raises. Mark them parsed (defaults).
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class GrainPipeline:
    """Input pipeline over a `archives.DatasetSplits` (see the module docstring)."""

    def __init__(self, splits, *, image_size, batch_size, eval_batch_size, seed, split_seed,
                 val_fraction, subset_fraction, augment="none", num_workers=2, num_threads=0,
                 prefetch_batches=2, num_epochs=1, crop_fraction=0.875, shard=(0, 1)):
        self.name, self.class_names = splits.name, list(splits.class_names)
        self.num_classes = len(self.class_names)
        self.image_size, self.batch_size, self.eval_batch_size = image_size, batch_size, \
            eval_batch_size
        self.seed, self.augment, self.crop_fraction = seed, augment, crop_fraction
        self.num_workers, self.prefetch_batches, self.num_epochs = num_workers, \
            prefetch_batches, num_epochs
        self.num_threads = num_threads or min(os.cpu_count() or 1, 16)
        # (i, n): make only part i of n of every batch (a process's rows, multi-host)
        self.shard = protocol.check_shard(shard, batch_size, eval_batch_size)
        real_augment.get(augment)  # a bad name fails here, not in a worker.
        self.train_source, self.test_source = splits.train_source, splits.test_source
        train_labels = splits.train_source.labels[splits.train_indices]
        d_local, val_local = protocol_splits(train_labels, val_fraction=val_fraction,
                                             subset_fraction=subset_fraction, seed=split_seed)
        self.d_idx = np.asarray(splits.train_indices)[d_local]
        self.val_idx = np.asarray(splits.train_indices)[val_local]
        self.test_idx = np.asarray(splits.test_indices)
        self.steps_per_epoch = max(1, len(self.d_idx) // batch_size)
        self._stream = None

    @classmethod
    def from_config(cls, splits, config, shard=(0, 1)):
        data = config.data
        return cls(splits, image_size=data.image_size, batch_size=config.batch_size,
                   eval_batch_size=config.eval_batch_size, seed=config.seed,
                   split_seed=data.split_seed, val_fraction=data.val_fraction,
                   subset_fraction=data.subset_fraction, augment=data.augment,
                   num_workers=data.num_workers, num_threads=data.num_threads,
                   prefetch_batches=data.prefetch_batches, num_epochs=config.num_epochs,
                   crop_fraction=data.eval_crop_fraction, shard=shard)

    def split_sizes(self):
        return {"train": len(self.d_idx), "val": len(self.val_idx), "test": len(self.test_idx)}

    def split_keys(self, split):
        """The file keys of a split's images, in the order eval_batches yields them."""
        source, idx = self._split(split)
        return [source.keys[i] for i in idx]

    def _split(self, split):
        if split == "test":
            return self.test_source, self.test_idx
        if split not in ("train", "val"):
            raise ValueError(f"split must be train, val or test, not {split!r}")
        return self.train_source, self.d_idx if split == "train" else self.val_idx

    def _open_stream(self, epoch, with_val):
        last = max(self.num_epochs, epoch)
        fn = TrainBatch(self.train_source, self.d_idx, self.val_idx,
                        batch_size=self.batch_size, seed=self.seed,
                        steps_per_epoch=self.steps_per_epoch, image_size=self.image_size,
                        augment=self.augment, crop_fraction=self.crop_fraction,
                        with_val=with_val,
                        rows=protocol.shard_rows(self.shard, self.batch_size))
        spe = self.steps_per_epoch
        ds = grain.MapDataset.range(epoch * spe, (last + 1) * spe).map(fn)
        if self.num_workers > 0:
            _ensure_absl_flags_parsed()
            _quiet_resource_tracker()
            it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
            it = it.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=self.num_workers, per_worker_buffer_size=self.prefetch_batches))
        else:
            it = ds.to_iter_dataset(grain.ReadOptions(
                num_threads=self.num_threads,
                prefetch_buffer_size=max(self.prefetch_batches, self.num_threads)))
        return _Stream(iter(it), epoch, last, with_val)

    def train_batches(self, epoch, with_val=False):
        """One epoch of full training batches, fixed by (config.seed, epoch)."""
        stream, self._stream = self._stream, None
        if stream is None or stream.next_epoch != epoch or stream.with_val != with_val \
                or stream.last < epoch:
            if stream is not None:
                stream.close()
            stream = self._open_stream(epoch, with_val)
        for step in range(self.steps_per_epoch):
            batch = next(stream.iterator)
            if step == self.steps_per_epoch - 1:
                # The epoch is read whole: the stream serves the next one (set before the
                # last yield, so a consumer that stops after it keeps the stream).
                stream.next_epoch = epoch + 1
                self._stream = stream
            yield batch
        if stream.next_epoch > stream.last and self._stream is stream:
            self.close()  # its last epoch: stop the workers, free their shared memory.

    def eval_batches(self, split):
        """The whole split in a fixed order, the last batch zero-padded and masked."""
        source, idx = self._split(split)
        num_batches = -(-len(idx) // self.eval_batch_size)
        fn = EvalBatch(source, idx, batch_size=self.eval_batch_size,
                       image_size=self.image_size, crop_fraction=self.crop_fraction,
                       rows=protocol.shard_rows(self.shard, self.eval_batch_size))
        ds = grain.MapDataset.range(num_batches).map(fn)
        threads = min(self.num_threads, max(num_batches, 1))
        yield from ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                        prefetch_buffer_size=threads))

    def close(self):
        """Stop the training workers (they also stop when the last epoch is read)."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None
