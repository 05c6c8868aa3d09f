"""A directory in the published repository's layout, read as an :class:`Ensemble`.

The authors' repository (github.com/Chan-0312/RRNet, docs/models.md) holds
``model_log/<run>/SP<i>|CA<i>/weight_best.pkl`` and ``data/refer_set/label_config.pkl``.
Weights go through ``torch.load(weights_only=True)`` (:mod:`lamost_rrnet.models.published`);
the normalization pickle through an unpickler that allows exactly three NumPy globals.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lamost_rrnet.ensemble import Ensemble, LabelGroup, Normalization
from lamost_rrnet.errors import ModelError
from lamost_rrnet.labels import PAPER_GROUPS
from lamost_rrnet.models.published import (
    PUBLISHED_RUN,
    architecture_from_run,
    load_published_member,
)
from lamost_rrnet.spectra.preprocess import RRNET2022

#: Label ranges of the paper's reference set (docs/models.md); the other labels of
#: the published model get mean ± PUBLISHED_RANGE_STDS std of its label_config.
PUBLISHED_RANGES = {"Teff[K]": (4000.0, 6500.0), "Logg": (0.0, 5.0), "FeH": (-1.45, 0.45)}
PUBLISHED_RANGE_STDS = 4.0
LABEL_CONFIG = Path("data", "refer_set", "label_config.pkl")
MEMBER_FILE = "weight_best.pkl"


def _numpy_reconstruct() -> Any:
    try:  # NumPy 2 moved numpy.core to numpy._core; pickles name either spelling.
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Allows exactly the three globals of a pickled dict of NumPy arrays (docs/models.md)."""

    def __init__(self, fh, path: Path):
        super().__init__(fh)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise ModelError(
            f"{self.path}: refused to unpickle {module}.{name}: a normalization file may only "
            "hold NumPy arrays"
        )


def load_label_config(path: str | os.PathLike[str], n_pixels: int = 7200) -> dict[str, Any]:
    """The published ``label_config.pkl``, through the restricted unpickler, checked."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = _NumpyOnlyUnpickler(fh, path).load()
    except ModelError:
        raise
    except (OSError, pickle.UnpicklingError, EOFError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable label_config pickle ({exc})") from exc
    keys = ("label_list", "label_mean", "label_std", "flux_mean", "flux_std")
    if not isinstance(data, dict) or any(k not in data for k in keys):
        raise ModelError(f"{path}: a label_config must be a dict with {', '.join(keys)}")
    labels = data["label_list"]
    if not isinstance(labels, list) or not all(isinstance(n, str) for n in labels):
        raise ModelError(f"{path}: label_list must be a list of names")
    for key, size in (("label_mean", len(labels)), ("label_std", len(labels))) + tuple(
        (k, n_pixels) for k in ("flux_mean", "flux_std")
    ):
        value = data[key]
        if not isinstance(value, np.ndarray) or value.shape != (size,):
            raise ModelError(f"{path}: {key} must be an array of {size} values")
    return data


def published_label_ranges(
    normalization: Normalization, labels: Sequence[str]
) -> dict[str, tuple[float, float]]:
    """The published model's label ranges for the flag (docs/models.md)."""
    ranges = {}
    for label, row in zip(labels, normalization.index(labels), strict=True):
        if label in PUBLISHED_RANGES:
            ranges[label] = PUBLISHED_RANGES[label]
        else:
            mean = float(normalization.label_mean[row])
            spread = PUBLISHED_RANGE_STDS * float(normalization.label_std[row])
            ranges[label] = (mean - spread, mean + spread)
    return ranges


def _run_members(run_dir: Path, group: str) -> list[Path]:
    found = []
    for folder in run_dir.glob(f"{group}*"):
        index = folder.name[len(group) :]
        if index.isdigit() and (folder / MEMBER_FILE).is_file():
            found.append((int(index), folder / MEMBER_FILE))
    return [path for _, path in sorted(found)]


def _has_members(run_dir: Path) -> bool:
    return any(_run_members(run_dir, group) for group in PAPER_GROUPS)


def published_runs(root: str | os.PathLike[str]) -> list[str]:
    """The runs with member weights under ``root/model_log``."""
    logs = Path(root) / "model_log"
    if not logs.is_dir():
        return []
    return sorted(d.name for d in logs.iterdir() if d.is_dir() and _has_members(d))


def _is_run(path: Path) -> bool:
    return path.parent.name == "model_log" and _has_members(path)


def is_published_layout(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory that :func:`load_published` reads: a clone of the
    published repository with member weights, or one run of its ``model_log``."""
    path = Path(path)
    return bool(published_runs(path)) or _is_run(path)


def load_published(
    root: str | os.PathLike[str],
    run: str | None = None,
    *,
    name: str = "RRNet",
    version: str | None = None,
    provenance: dict | None = None,
    device: str | torch.device = "cpu",
) -> Ensemble:
    """An :class:`Ensemble` from a directory in the published repository's layout.

    ``root`` holds ``model_log/<run>/SP<i>|CA<i>/weight_best.pkl`` and
    ``data/refer_set/label_config.pkl``; it may also be ``root/model_log/<run>`` itself. Without
    ``run``, the paper's run is taken, or the only one; several others are an error that
    lists them.
    """
    root = Path(root)
    if run is None and _is_run(root):
        root, run = root.parent.parent, root.name
    runs = published_runs(root)
    if run is None:
        if PUBLISHED_RUN in runs:
            run = PUBLISHED_RUN
        elif len(runs) == 1:
            run = runs[0]
        elif not runs:
            raise ModelError(f"{root / 'model_log'}: no run with SP<i>/{MEMBER_FILE} or CA<i>")
        else:
            raise ModelError(
                f"{root / 'model_log'}: {len(runs)} runs and none is the paper's "
                f"({PUBLISHED_RUN}); choose one with --model {root / 'model_log'}/<run>: "
                + ", ".join(runs)
            )
    elif run not in runs:
        raise ModelError(f"{root / 'model_log' / run}: no member weights in this run")
    try:
        architecture = architecture_from_run(run)
    except ValueError as exc:
        raise ModelError(f"{root / 'model_log' / run}: {exc}") from exc
    config = load_label_config(root / LABEL_CONFIG, RRNET2022.n_pixels)
    normalization = Normalization(
        config["flux_mean"],
        config["flux_std"],
        config["label_list"],
        config["label_mean"],
        config["label_std"],
    )
    groups = []
    for group, labels in PAPER_GROUPS.items():
        files = _run_members(root / "model_log" / run, group)
        if files:
            members = [load_published_member(p, len(labels), architecture) for p in files]
            groups.append(LabelGroup(group, list(labels), members))
    labels = [label for g in groups for label in g.labels]
    return Ensemble(
        name,
        version or run,
        architecture,
        groups,
        normalization,
        RRNET2022,
        published_label_ranges(normalization, labels),
        provenance or {"source": str(root), "run": run},
    ).to(device)
