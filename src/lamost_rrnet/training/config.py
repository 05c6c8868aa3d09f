"""The ``option: value`` pairs of a training configuration file (``train --config``)."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml

from lamost_rrnet.errors import UsageError


def read_config(path: str | os.PathLike[str], known: Collection[str]) -> dict[str, Any]:
    """{option: value} of a YAML file of ``option: value`` pairs, for the options in ``known``.

    Names become parameter names (``--batch-size`` and ``batch-size`` give ``batch_size``);
    a list becomes comma-separated text, as ``--nr 4,8,16`` takes it. :class:`UsageError`
    when the file is unreadable, is not such a mapping, or names an option not in ``known``.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())  # YAML's messages run over several lines
        raise UsageError(f"{path}: cannot read it ({reason})") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path}: must map option names to values")
    options = {}
    for key, value in data.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name not in known:
            raise UsageError(f"{path}: unknown option {key!r} (known: {', '.join(sorted(known))})")
        options[name] = ",".join(str(v) for v in value) if isinstance(value, list) else value
    return options
