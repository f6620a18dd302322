"""The one interface every generator plugs in through (SPEC: "Generators and weights").

A `Generator` bundles a pure sampling function with its frozen parameters:
    images = gen.sample(gen.params, z, labels)
z has shape (N, *gen.latent_shape), labels are int32 (N,) class indices (ignored when
gen.num_classes == 0), images are NHWC float32 in [-1, 1] (clipped) at gen.resolution.
`sample` is jittable and differentiable in z and in params (MPS backpropagates through it).
"""
import dataclasses
from typing import Any, Callable, Tuple


@dataclasses.dataclass(frozen=True)
class Generator:
    sample: Callable[[Any, Any, Any], Any]
    params: Any
    latent_shape: Tuple[int, ...]
    num_classes: int
    resolution: int
    kind: str = ""

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0
