"""Deprecated: the catalogue module is :mod:`lamost_rrnet.catalogue`, spelt like the word.

This name re-exports it for one release.
"""

from lamost_rrnet._moved import moved_module

__getattr__ = moved_module(__name__, "lamost_rrnet.catalogue")
