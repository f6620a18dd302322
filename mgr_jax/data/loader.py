"""The one input-pipeline interface, and the pipeline a config names.

Both implementations (`memory.ArrayPipeline` for the embedded digits and Fashion-MNIST,
`grain_pipeline.GrainPipeline` for the image datasets) yield batches as dicts of numpy arrays,
normalised by `protocol.normalize` (the classifier's input; consumers never undo it):
    train: {"image": (B, S, S, 3) float32, "label": (B,) int32}, plus "val_image" /
           "val_label" (a D_val batch, unaugmented) when `with_val` is set (MPS steps);
    eval:  the same keys plus "mask" (B,) float32, 0 on padding (static shapes: one compile).
"""
from typing import Iterator, Protocol, runtime_checkable

from mgr_jax.data import datasets, grain_pipeline, memory
from mgr_jax.data.datasets import fashion_mnist


@runtime_checkable
class Pipeline(Protocol):
    """What the train loop, the experiments and the GAN trainer use of a pipeline."""
    name: str
    num_classes: int
    class_names: list  # num_classes display names
    image_size: int
    batch_size: int
    steps_per_epoch: int

    def split_sizes(self) -> dict:
        """{"train": len(D), "val": len(D_val), "test": len(test)}."""

    def train_batches(self, epoch: int, with_val: bool = False) -> Iterator[dict]:
        """One epoch of full training batches, in an order fixed by (seed, epoch)."""

    def eval_batches(self, split: str) -> Iterator[dict]:
        """The whole split ("train", "val" or "test") in order, the last batch padded."""

    def close(self) -> None:
        """Release workers (a no-op for the in-memory pipeline)."""


def create_pipeline(config, shard=(0, 1)) -> Pipeline:
    """The pipeline of `config.data.name` (UserError, one line, for unknown names).

    `shard=(i, n)`: its batches are part i of n of the global batches (the rows one process of
    a multi-host run feeds; `sharding.process_shard`), and only those rows are decoded.
    """
    if config.data.name == "digits":
        return memory.create_digits_pipeline(config, shard)
    datasets.validate(config.data)
    splits = datasets.load_splits(config)
    if config.data.name == "fashion_mnist":
        return fashion_mnist.create_pipeline(splits, config, shard)
    return grain_pipeline.GrainPipeline.from_config(splits, config, shard)
