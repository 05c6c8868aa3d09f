"""Label names, their order, units and descriptions, shared by every part of lamost-rrnet."""

from __future__ import annotations

ELEMENTS = ("C", "N", "O", "Mg", "Al", "Si", "S", "K", "Ca", "Ti", "Cr", "Mn", "Fe", "Ni", "Cu")

#: The 17 labels in the paper's Table 3 (catalogue) order: FeH sits between MnH and NiH.
CATALOGUE_LABELS = ("Teff[K]", "Logg", *(f"{el}H" for el in ELEMENTS))

#: The published ensemble's groups and their output order (docs/models.md).
PAPER_GROUPS = {
    "SP": ("Teff[K]", "Logg", "FeH"),
    "CA": (
        "CH",
        "NH",
        "OH",
        "MgH",
        "AlH",
        "SiH",
        "SH",
        "KH",
        "CaH",
        "TiH",
        "CrH",
        "MnH",
        "NiH",
        "CuH",
    ),
}
PUBLISHED_ORDER = PAPER_GROUPS["SP"] + PAPER_GROUPS["CA"]


def unit(label: str) -> str:
    """FITS unit string of a label: K for Teff, dex for log g and abundances."""
    return "K" if label.startswith("Teff") else "dex"


def description(label: str) -> str:
    """A short human description of a label, as used in FITS TCOMM and plots."""
    if label.startswith("Teff"):
        return "effective temperature"
    if label == "Logg":
        return "surface gravity log10(g / cm s^-2)"
    if label.endswith("H") and label[:-1] in ELEMENTS:
        return f"abundance [{label[:-1]}/H]"
    return label


def pretty(label: str) -> str:
    """The paper's typographic name of a label, for plot axes."""
    if label.startswith("Teff"):
        return "Teff (K)"
    if label == "Logg":
        return "log g (dex)"
    if label.endswith("H") and label[:-1] in ELEMENTS:
        return f"[{label[:-1]}/H] (dex)"
    return label
