"""Label groups to train: the paper's SP/CA split, one group of every label, or a YAML file.

A group's members predict its labels together (one network output per label); the ensemble
concatenates the groups in order. A YAML file maps group names to label lists::

    SP: [Teff[K], Logg, FeH]
    CA: [CH, NH, OH]

(optionally under a top-level ``groups:`` key). Any label column of the dataset may be named.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from lamost_rrnet.errors import DatasetError, RRNetError
from lamost_rrnet.labels import PAPER_GROUPS
from lamost_rrnet.names import GROUPS_PAPER, GROUPS_SINGLE

#: Group names become member file names (``SP0.safetensors``).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SINGLE_NAME = "ALL"


@dataclass(frozen=True)
class GroupSpec:
    """One label group to train: its name and its labels, in output order."""

    name: str
    labels: tuple[str, ...]


def read_groups_file(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """The group → labels mapping of a YAML file; :class:`RRNetError` when malformed."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RRNetError(f"{path}: cannot read the label groups ({exc})") from exc
    if isinstance(data, Mapping) and set(data) == {"groups"}:
        data = data["groups"]
    if not isinstance(data, Mapping) or not data:
        raise RRNetError(f"{path}: label groups must be a mapping of group name to label list")
    groups = {}
    for name, labels in data.items():
        if isinstance(labels, str) or not isinstance(labels, Sequence) or not labels:
            raise RRNetError(f"{path}: group {name!r} needs a non-empty list of labels")
        groups[str(name)] = [str(label) for label in labels]
    return groups


def resolve_groups(
    spec: str | os.PathLike[str] | Mapping[str, Sequence[str]],
    label_names: Sequence[str],
    dataset: str | os.PathLike[str] = "the dataset",
) -> list[GroupSpec]:
    """The groups for ``spec`` (``paper``, ``single``, a YAML path or a mapping), checked
    against the dataset's ``label_names``."""
    if isinstance(spec, Mapping):
        where, raw = "the label groups", {str(k): list(v) for k, v in spec.items()}
    elif str(spec) == GROUPS_PAPER:
        where, raw = "the paper's groups", {k: list(v) for k, v in PAPER_GROUPS.items()}
    elif str(spec) == GROUPS_SINGLE:
        where, raw = "the single group", {SINGLE_NAME: list(label_names)}
    else:
        where, raw = str(spec), read_groups_file(spec)
    seen: dict[str, str] = {}
    groups = []
    for name, labels in raw.items():
        if not _NAME.fullmatch(name):
            raise RRNetError(f"{where}: group name {name!r} must be letters, digits, _ . -")
        for label in labels:
            if label in seen:
                raise RRNetError(f"{where}: label {label} is in groups {seen[label]} and {name}")
            seen[label] = name
        groups.append(GroupSpec(name, tuple(labels)))
    missing = [label for label in seen if label not in label_names]
    if missing:
        raise DatasetError(
            f"{dataset}: no label {', '.join(missing)} (has: {', '.join(label_names)})"
        )
    return groups
