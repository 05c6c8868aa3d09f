"""What ``inspect`` shows: a file's identity and its extensions, as plain text."""

from __future__ import annotations

from lamost_rrnet.spectra.io import MRSFile


def extension_rows(mrs: MRSFile) -> list[dict]:
    """One record per extension: name, kind, arm, pixels, wavelength range and S/N."""
    rows = []
    for arm in mrs.arms.values():
        rows.append(
            {
                "extname": arm.extname,
                "kind": arm.kind,
                "arm": arm.side,
                "pixels": int(arm.flux.size),
                "wave_min": float(arm.wavelength[0]) if arm.wavelength.size else float("nan"),
                "wave_max": float(arm.wavelength[-1]) if arm.wavelength.size else float("nan"),
                "snr": arm.snr,
            }
        )
    return rows


def summary_text(mrs: MRSFile) -> str:
    """The summary printed by ``lamost-rrnet inspect``."""
    lines = [
        f"file          {mrs.path}",
        f"obsid         {mrs.obsid}",
        f"designation   {mrs.designation}",
        f"ra, dec       {mrs.ra:.6f} {mrs.dec:+.6f} deg",
        f"lmjd          {mrs.lmjd}",
        f"data release  {mrs.data_release or 'unknown'} ({mrs.layout.upper()} layout)",
        "",
        f"{'extension':<12} {'kind':<9} {'arm':<5} {'pixels':>6}  "
        f"{'wavelength (Å)':<17} {'S/N':>7}",
    ]
    for row in extension_rows(mrs):
        wave = f"{row['wave_min']:.2f}-{row['wave_max']:.2f}"
        lines.append(
            f"{row['extname']:<12} {row['kind']:<9} {row['arm']:<5} {row['pixels']:>6}  "
            f"{wave:<17} {row['snr']:>7.2f}"
        )
    return "\n".join(lines)
