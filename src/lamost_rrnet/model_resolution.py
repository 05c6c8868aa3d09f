"""What ``--model`` accepts, as an :class:`Ensemble`: a registered name or a directory.

A registered name is fetched into the verified cache first (:mod:`lamost_rrnet.download`); a
directory is ours (``model.yaml``, :meth:`Ensemble.load`) or one in the published
repository's layout (:mod:`lamost_rrnet.published_layout`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lamost_rrnet.download import fetch
from lamost_rrnet.ensemble import MODEL_FILE, Ensemble
from lamost_rrnet.errors import ModelError, RRNetError
from lamost_rrnet.hub import downloadable_models, get_entry
from lamost_rrnet.names import DEFAULT_MODEL
from lamost_rrnet.published_layout import is_published_layout, load_published


def load_registered(
    name: str, device: str | torch.device = "auto", *, progress: bool = False
) -> Ensemble:
    """A model of the registry, downloaded and verified into the cache first if needed
    (``progress``: with a bar per file downloaded)."""
    entry = get_entry(name)
    root = fetch(name, progress=progress)
    if entry.layout == "lamost-rrnet":
        return Ensemble.load(root, device=device)
    provenance = {
        "registry": name,
        "repository": entry.repository,
        "commit": entry.commit,
        "license": entry.license,
        "run": entry.run,
    }
    return load_published(
        root,
        entry.run,
        name=name,
        version=entry.version,
        provenance={k: v for k, v in provenance.items() if v},
        device=device,
    )


def looks_like_path(spec: str) -> bool:
    """``./rrnet2022``, ``/x/y``, ``runs/m``, ``.``, ``~/m``: a path, never a registry name."""
    return (
        os.sep in spec
        or "/" in spec
        or (os.altsep is not None and os.altsep in spec)
        or spec in (os.curdir, os.pardir)
        or spec.startswith("~")
    )


def load_model(
    spec: str | os.PathLike[str] = DEFAULT_MODEL,
    device: str | torch.device = "auto",
    *,
    progress: bool = False,
) -> Ensemble:
    """What ``--model`` accepts: a registry name such as ``rrnet2022``, else a directory (ours,
    with ``model.yaml``, or one in the published repository's layout).

    A registered name always means the verified registry model, even when a folder of that
    name is in the working directory: give a path (``./rrnet2022``) for the folder.
    ``progress`` shows a bar while a registered model downloads.
    """
    text = os.fspath(spec)
    names = downloadable_models()
    if text in names:  # a registry name cannot look like a path
        return load_registered(text, device=device, progress=progress)
    path = Path(text).expanduser()
    if not looks_like_path(text) and not path.is_dir():
        raise ModelError(
            f"unknown model {text!r}: not a registered name ({', '.join(names)}) nor a "
            "directory; give a directory as a path, e.g. ./my_model"
        )
    if path.is_dir():
        if (path / MODEL_FILE).is_file():
            return Ensemble.load(path, device=device)
        if is_published_layout(path):
            return load_published(path, device=device)
        raise ModelError(
            f"{path}: neither a model directory (no {MODEL_FILE}) nor the published "
            "repository's layout (no model_log/<run>/SP0/weight_best.pkl)"
        )
    if path.exists():
        raise ModelError(f"{path}: a model is a directory or a registered name, not a file")
    raise ModelError(f"{text}: no such model directory")


def load_ensemble(
    source: str | os.PathLike[str] | Ensemble, device: str | torch.device, *, progress: bool = False
) -> Ensemble:
    """``source`` on ``device``: an Ensemble itself, or what ``--model`` names (a registry name,
    a model directory or the published layout, resolved and verified by :func:`load_model`);
    any failure to load is a ModelError."""
    if not isinstance(source, str | os.PathLike):
        return source.to(device)
    try:
        return load_model(os.fspath(source), device=device, progress=progress)
    except RRNetError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"{source}: the model cannot be loaded ({exc})") from exc
