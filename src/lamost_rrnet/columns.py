"""Column names that several parts of lamost-rrnet share: the LAMOST catalogue's, and where an
RV is looked for."""

from __future__ import annotations

#: The LAMOST catalogue's columns by our names: what crossmatch reads and the simulator writes.
LAMOST_COLUMNS = (
    "obsid",
    "filename",
    "extname_blue",
    "extname_red",
    "ra",
    "dec",
    "snr_blue",
    "snr_red",
    "rv",
    "lmjd",
)

#: Where the RV is looked for by default (RV table, crossmatch), first present wins.
RV_COLUMNS = ("rv", "rv_ku0", "rv_br0", "rv_lasp0")
