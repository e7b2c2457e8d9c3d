"""condconv for PyTorch: timm's CondConv2d on condconv's CUDA kernels (and its CPU reference path).

    import condconv.torch
    n = condconv.torch.convert(model)       # every timm CondConv2d -> condconv.torch.CondConv2d, in place
    with torch.inference_mode():
        y = model(x)

The layers are torch.library custom ops (``torch.ops.condconv.cond_conv2d``, ``...routed_cond_conv2d``) with fake
implementations, so torch.compile(fullgraph=True), torch.export and CUDA graphs see through them. Autograd works on
CPU tensors (the library's CPU reference backward) and CUDA tensors (its GPU backward, condconv_backward).
Importing this module imports torch; ``import condconv`` alone does not.
"""

from __future__ import annotations

from ._ops import GEOM_FIELDS, CondConvInputError, cached_layer_count
from .modules import CondConv2d, RoutedCondConv2d, convert, invalidate, padding_value

__all__ = [
    "GEOM_FIELDS",
    "CondConv2d",
    "CondConvInputError",
    "RoutedCondConv2d",
    "cached_layer_count",
    "convert",
    "invalidate",
    "padding_value",
]
