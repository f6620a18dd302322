"""Throughput of the 224x224 training input pipeline against what a ResNet-18 step consumes.

    python benchmarks/input_pipeline.py [--workers 2] [--images 200] [--batch-size 32]

Makes a synthetic image folder (JPEGs of about 500x375, the size of the paper datasets'
photos) in a temporary directory, then for each real-data augmentation measures the
training pipeline (decode + RandomResizedCrop + flip + augmentation + normalise):
    - in the main process with one thread (per-core cost, to extrapolate to other hosts);
    - with `--workers` grain worker processes (the default configuration).
Startup (first batch, including starting the workers) is reported apart from the steady
rate. Then it times the jitted base `classifier.train_step` of a full-width ResNet-18 at 224x224
on this machine's default JAX device and prints the ratio supply / demand (above 1: the
pipeline keeps up).
"""
import argparse
import functools
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import imagefolder  # noqa: E402
from mgr_jax.data import loader  # noqa: E402

AUGMENTS = ("none", "randaugment", "trivialaugment", "augmix")


def make_folder(root, num_images, num_classes=4, size=(500, 375)):
    """Photo-like JPEGs: smooth colour fields plus texture (about 40-60 KB each)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size[1], 0:size[0]].astype(np.float32)
    for i in range(num_images):
        c = i % num_classes
        os.makedirs(os.path.join(root, f"class_{c}"), exist_ok=True)
        f = rng.uniform(0.005, 0.03, 3)
        phase = rng.uniform(0, 6.3, 3)
        img = np.stack([127 + 100 * np.sin(f[k] * (xx + 0.7 * yy) + phase[k]) for k in range(3)],
                       -1)
        img += rng.normal(0, 18, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            os.path.join(root, f"class_{c}", f"{i:04d}.jpg"), quality=90)


def pipeline_rate(root, augment, workers, threads, batch_size, epochs):
    """(startup seconds, steady images/s) of `epochs` epochs of training batches."""
    config = imagefolder.get_config()
    config.data.manual_dir = root
    config.data.augment = augment
    config.data.num_workers = workers
    config.data.num_threads = threads
    config.batch_size = batch_size
    config.num_epochs = epochs
    pipe = loader.create_pipeline(config)
    start = time.perf_counter()
    first, count = None, 0
    for epoch in range(1, epochs + 1):
        for batch in pipe.train_batches(epoch):
            assert batch["image"].shape == (batch_size, 224, 224, 3)
            if first is None:
                first = time.perf_counter()
            else:
                count += batch_size
    end = time.perf_counter()
    pipe.close()
    return first - start, count / (end - first)


def model_demand(batch_size, steps):
    """Images/s that the jitted base train step of ResNet-18 at 224x224 consumes."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from mgr_jax import classifier  # noqa: PLC0415
    from mgr_jax.run import build  # noqa: PLC0415

    config = imagefolder.get_config()
    model = build.create_model(config, num_classes=100)
    lr_fn = build.create_learning_rate_fn(config, 100)
    tx = build.create_optimizer(config, lr_fn)
    state = classifier.create_train_state(jax.random.key(0), model, tx, 224)
    step = jax.jit(functools.partial(classifier.train_step, model=model, tx=tx,
                                     learning_rate_fn=lr_fn), donate_argnums=(0,))
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.normal(size=(batch_size, 224, 224, 3)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 100, batch_size), jnp.int32)}
    key = jax.random.key(1)
    state, metrics = step(state, batch, key)  # compile
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    return seconds, batch_size / seconds, jax.devices()[0].device_kind


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--model-batch-size", type=int, default=16)
    parser.add_argument("--model-steps", type=int, default=3)
    parser.add_argument("--augments", default=",".join(AUGMENTS))
    args = parser.parse_args()
    print(f"host: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as root:
        make_folder(root, args.images)
        sizes = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs]
        print(f"{len(sizes)} JPEGs of 500x375, mean {np.mean(sizes) / 1e3:.0f} KB; "
              f"batch {args.batch_size}, {args.epochs} epochs", flush=True)
        rows = []
        for augment in args.augments.split(","):
            for workers, threads in ((0, 1), (args.workers, 0)):
                startup, rate = pipeline_rate(root, augment, workers, threads, args.batch_size,
                                              args.epochs)
                label = f"{workers} workers" if workers else "main, 1 thread"
                rows.append((augment, label, startup, rate))
                print(f"  {augment:15s} {label:15s} startup {startup:5.1f} s  {rate:7.1f} img/s",
                      flush=True)
    seconds, demand, device = model_demand(args.model_batch_size, args.model_steps)
    print(f"\nResNet-18 base train step, 224x224, batch {args.model_batch_size} on {device}: "
          f"{seconds:.2f} s/step = {demand:.1f} img/s demanded\n")
    print("| augmentation | loader | startup (s) | images/s | supply / demand |")
    print("| --- | --- | ---: | ---: | ---: |")
    for augment, label, startup, rate in rows:
        print(f"| {augment} | {label} | {startup:.1f} | {rate:.1f} | {rate / demand:.1f} |")


if __name__ == "__main__":
    main()
