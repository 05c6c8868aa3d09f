"""Deprecated: the catalogue module is :mod:`lamost_rrnet.catalogue`, spelt like the word.

This name re-exports it for one release.
"""

import warnings

from lamost_rrnet import catalogue as _catalogue

warnings.warn(
    "lamost_rrnet.catalog is deprecated and will be removed in the next release: "
    "import lamost_rrnet.catalogue",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str):
    return getattr(_catalogue, name)
