"""StyleGAN2-ADA in Flax: `ops` (plain functions), `generator`, `discriminator`.

The generator's names are re-exported here (`stylegan2.Generator`, `stylegan2.random_variables`,
...), as are the ops the converters and tests use.
"""
from mgr_jax.models.stylegan2.generator import (
                                                FullyConnectedLayer,
                                                Generator,
                                                MappingNetwork,
                                                SynthesisBlock,
                                                SynthesisLayer,
                                                SynthesisNetwork,
                                                ToRGBLayer,
                                                block_layout,
                                                count_ws,
                                                init_variables,
                                                random_variables,
                                                truncate,
)
from mgr_jax.models.stylegan2.ops import (
                                                bias_act,
                                                conv2d_resample,
                                                fir_depthwise,
                                                modulated_conv2d,
                                                normalize_2nd_moment,
                                                separable_taps,
                                                setup_filter,
                                                upfirdn2d,
                                                upsample2d,
)

__all__ = ["FullyConnectedLayer", "Generator", "MappingNetwork", "SynthesisBlock",
           "SynthesisLayer", "SynthesisNetwork", "ToRGBLayer", "bias_act", "block_layout",
           "conv2d_resample", "count_ws", "fir_depthwise", "init_variables", "modulated_conv2d",
           "normalize_2nd_moment", "random_variables", "separable_taps", "setup_filter",
           "truncate", "upfirdn2d", "upsample2d"]
