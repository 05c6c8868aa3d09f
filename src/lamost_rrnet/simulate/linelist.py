"""Deprecated: the line list and atomic data moved to
:mod:`lamost_rrnet.spectra.synthesis.linelist`, with the rest of the spectral synthesis that the
RV templates use; this path re-exports it for one release."""

from lamost_rrnet._moved import moved_module

__getattr__ = moved_module(__name__, "lamost_rrnet.spectra.synthesis.linelist")
