"""Time converting a full-size torchvision ResNet-18 (1000 classes) .pth to Flax variables.

    python benchmarks/convert_resnet.py [--arch resnet18] [--repeats 3]

Writes a random state_dict in torch.save's zip layout with converters.torch_pickle.save (no
torch needed), then times `converters.torchvision_resnet.convert` on it, including reading the
file and putting the arrays on the default device. Prints the seconds of the first (cold) call
and the best of the repeats.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402  (after the path set-up above)

from converters import pickle_writer, torch_pickle, torchvision_resnet  # noqa: E402


def random_state_dict(arch, num_classes, seed=0):
    """{torch key: array} with torchvision's keys and shapes, random values."""
    r = np.random.default_rng(seed)
    out = {}
    for key, shape in torchvision_resnet.torchvision_shapes(arch, num_classes).items():
        if key.endswith("num_batches_tracked"):
            out[key] = np.array(0, np.int64)
        elif key.endswith("running_var"):
            out[key] = r.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            out[key] = r.standard_normal(shape, np.float32)
    return out


def main():
    """Write the file, time the conversion, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{args.arch}.pth")
        pickle_writer.save(path, random_state_dict(args.arch, args.num_classes))
        size_mb = os.path.getsize(path) / 2 ** 20
        times = []
        for _ in range(max(1, args.repeats)):
            start = time.perf_counter()
            _, variables = torchvision_resnet.convert(path)
            jax.block_until_ready(variables)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        torch_pickle.load(path)
        read_s = time.perf_counter() - start
    print(f"{args.arch} ({args.num_classes} classes, {size_mb:.1f} MiB .pth) on "
          f"{jax.default_backend()}: convert first {times[0]:.3f} s, best {min(times):.3f} s "
          f"(of which reading the file {read_s:.3f} s)")


if __name__ == "__main__":
    main()
