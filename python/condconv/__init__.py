"""condconv: CondConv / Dynamic Convolution layers over libcondconv (NumPy core; ``condconv.torch`` for PyTorch)."""

from __future__ import annotations

from ._lib import CondConvError, LibraryNotFoundError

__all__ = ["CondConvError", "LibraryNotFoundError"]
