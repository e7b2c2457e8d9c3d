"""condconv: CondConv / Dynamic Convolution layers over libcondconv.

The NumPy core (this package) runs layers on the CPU reference path and exposes the GPU API at the level of raw
addresses; ``condconv.torch`` (needs PyTorch) is the drop-in for timm's ``CondConv2d``. Importing the package
loads nothing: the shared library is loaded on first use (``$CONDCONV_LIBRARY`` or the copy inside the package).

NumPy types of the layer dtypes: "f32" float32, "f16" float16, "bf16" uint16 bfloat16 bit patterns
(:func:`convert`). Routing weights are float32 [N, E].
"""

from __future__ import annotations

from ._lib import (
    Activation,
    Algo,
    AlgoSelect,
    CondConvError,
    DType,
    Layout,
    LibraryNotFoundError,
    Math,
    PaddingMode,
    Routing,
    Status,
)
from .core import (
    Context,
    Layer,
    LayerSpec,
    algo_names,
    backward_algo_names,
    convert,
    device_count,
    numpy_dtype,
    version,
)

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "Algo",
    "AlgoSelect",
    "CondConvError",
    "Context",
    "DType",
    "Layer",
    "LayerSpec",
    "Layout",
    "LibraryNotFoundError",
    "Math",
    "PaddingMode",
    "Routing",
    "Status",
    "__version__",
    "algo_names",
    "backward_algo_names",
    "convert",
    "device_count",
    "numpy_dtype",
    "version",
]
