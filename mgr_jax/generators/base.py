"""The one interface every generator plugs in through (SPEC: "Generators and weights").

A `Generator` bundles a pure sampling function with its frozen parameters:
    images = gen.sample(gen.params, z, labels, rng=None)
z has shape (N, *gen.latent_shape), labels are int32 (N,) class indices (ignored when
gen.num_classes == 0), images are NHWC float32 in [-1, 1] (clipped) at gen.resolution.
`rng` is the key of samplers that draw noise per call (StyleGAN2-ADA, StyleGAN-XL and FastGAN
with noise_mode "random"); the others (BigGAN, EDM, the random generator) ignore it. The steps call
`sample(params, w, labels)`: their samples are a function of the latents alone.
`sample` is jittable and differentiable in z and in params (MPS backpropagates through it).
"""
import dataclasses
import math
import numbers
from typing import Any, Callable, Tuple

MAX_TRUNCATION_PSI = 10.0  # past this, w leaves the trained range and float32 overflows
MAX_STEPS = 256  # EDM's Heun steps: the unrolled sampler (and its gradient) grows with them


@dataclasses.dataclass(frozen=True)
class Generator:
    sample: Callable[..., Any]  # (params, z, labels, rng=None) -> images
    params: Any
    latent_shape: Tuple[int, ...]
    num_classes: int
    resolution: int
    kind: str = ""

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0


def check_truncation(truncation_psi, truncation_cutoff):
    """ValueError (one line) unless psi is a finite number in [-MAX_TRUNCATION_PSI,
    MAX_TRUNCATION_PSI] and the cutoff None or an integer >= 0 (StyleGAN samplers)."""
    check_number(truncation_psi, "truncation_psi", -MAX_TRUNCATION_PSI, MAX_TRUNCATION_PSI)
    if truncation_cutoff is not None and (
            isinstance(truncation_cutoff, bool)
            or not isinstance(truncation_cutoff, numbers.Integral) or truncation_cutoff < 0):
        raise ValueError(f"truncation_cutoff={truncation_cutoff!r} must be None or an integer "
                         ">= 0 (the number of ws truncated)")


def check_number(value, name, low, high):
    """`value` as a float if it is a finite real number in [low, high]; else ValueError."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    try:
        ok = ok and math.isfinite(value) and low <= value <= high
    except OverflowError:
        ok = False
    if not ok:
        raise ValueError(f"{name}={value!r} must be a finite number in [{low:g}, {high:g}]")
    return float(value)
