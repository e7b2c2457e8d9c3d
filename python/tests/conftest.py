"""Shared fixtures: a CPU context, and the library found the way users find it.

The tests load libcondconv through condconv._lib, so they run against ``$CONDCONV_LIBRARY`` (e.g. the CMake build's
build/libcondconv.so, with ``PYTHONPATH=python``) or against the copy an installed wheel carries. A missing
library fails every test with the loader's message; it is never a skip.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import condconv


@pytest.fixture(scope="session", autouse=True)
def _library_loads() -> None:
    # Fails loudly (LibraryNotFoundError says how to build) instead of skipping.
    condconv._lib.lib()


@pytest.fixture
def ctx() -> Iterator[condconv.Context]:
    with condconv.Context("cpu") as context:
        yield context
