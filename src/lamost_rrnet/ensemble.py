"""Deep ensembles: label groups of members, the normalization, eq. 3, and the model directory.

An :class:`Ensemble` turns continuum-normalized flux (B, 7200) into μ and σ per label in
physical units. It clips the flux (inference only), z-scores it per pixel, runs every member
of every label group, combines each group's members by paper eq. 3 (docs/models.md) and scales
back with the label mean and std. The published model and ours share this object.

Model directory (docs/models.md)::

    model.yaml            name, version, architecture, groups, normalization, preprocessing,
                          label_ranges, provenance, calibration (when calibrated),
                          sha256 of every other file
    normalization.npz     flux_mean, flux_std, label_names, label_mean, label_std
    <GROUP><i>.safetensors  one member's state_dict (no pickle anywhere)
"""

from __future__ import annotations

import itertools
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from lamost_rrnet.atomic import atomic_path, atomic_write_bytes
from lamost_rrnet.calibration import Calibrated, Calibration
from lamost_rrnet.errors import ModelError
from lamost_rrnet.hashing import sha256_file
from lamost_rrnet.paths import stays_inside
from lamost_rrnet.spectra.preprocess import RRNET2022, PreprocessSpec

MODEL_FILE = "model.yaml"
NORMALIZATION_FILE = "normalization.npz"
FORMAT = "lamost-rrnet model directory"
#: 2 added ``calibration``: a reader of version 1 would give a calibrated model's raw σ.
FORMAT_VERSION = 2
#: Fewest spectra per thread worth a shard of their own in :meth:`Ensemble.predict`.
MIN_SHARD_ROWS = 16
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _plain(value: Any) -> Any:
    """Plain YAML data: tuples become lists and NumPy scalars Python numbers, so that what is
    saved is what was held."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass
class Normalization:
    """Per-pixel flux and per-label mean/std of the training set (docs/preprocessing.md 6-7)."""

    flux_mean: np.ndarray
    flux_std: np.ndarray
    label_names: list[str]
    label_mean: np.ndarray
    label_std: np.ndarray

    def __post_init__(self) -> None:
        # float32 flux statistics as published: the z-score runs in float32, like the training.
        self.flux_mean = np.asarray(self.flux_mean, np.float32).reshape(-1)
        self.flux_std = np.asarray(self.flux_std, np.float32).reshape(-1)
        self.label_names = [str(n) for n in self.label_names]
        self.label_mean = np.asarray(self.label_mean, np.float64).reshape(-1)
        self.label_std = np.asarray(self.label_std, np.float64).reshape(-1)
        if self.flux_mean.shape != self.flux_std.shape:
            raise ValueError("flux_mean and flux_std differ in length")
        n = len(self.label_names)
        if self.label_mean.shape != (n,) or self.label_std.shape != (n,):
            raise ValueError(f"label_mean and label_std must hold one value per label ({n})")

    def index(self, labels: Sequence[str]) -> np.ndarray:
        """Positions of ``labels`` in :attr:`label_names`."""
        missing = [n for n in labels if n not in self.label_names]
        if missing:
            raise ValueError(f"the normalization has no statistics for {', '.join(missing)}")
        return np.array([self.label_names.index(n) for n in labels], dtype=np.intp)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``normalization.npz`` atomically (no pickled objects in it)."""
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                flux_mean=self.flux_mean,
                flux_std=self.flux_std,
                label_names=np.array(self.label_names, dtype=str),
                label_mean=self.label_mean,
                label_std=self.label_std,
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Normalization:
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"{path}: not a valid normalization file ({exc})") from exc


@dataclass
class LabelGroup:
    """Members that predict the same labels, in this order, and are combined together."""

    name: str
    labels: list[str]
    members: list[nn.Module] = field(default_factory=list)


class Ensemble(Calibrated):
    """Label groups of member networks, with their normalization, preprocessing spec and σ
    calibration (:mod:`lamost_rrnet.calibration`)."""

    def __init__(
        self,
        name: str,
        version: str,
        architecture: Mapping[str, Any],
        groups: Sequence[LabelGroup],
        normalization: Normalization,
        preprocessing: PreprocessSpec = RRNET2022,
        label_ranges: Mapping[str, Sequence[float]] | None = None,
        provenance: Mapping[str, Any] | None = None,
        calibration: Calibration | None = None,
    ):
        self.name = str(name)
        self.version = str(version)
        self.architecture = _plain(dict(architecture))
        self.architecture.setdefault("kwargs", {})
        self.groups = [
            LabelGroup(g.name, [str(n) for n in g.labels], list(g.members)) for g in groups
        ]
        self.normalization = normalization
        self.preprocessing = preprocessing
        self.label_ranges = {
            str(k): (float(lo), float(hi)) for k, (lo, hi) in (label_ranges or {}).items()
        }
        self.provenance = _plain(dict(provenance or {}))
        if not self.groups:
            raise ValueError("an ensemble needs at least one label group")
        labels = self.labels
        if len(set(labels)) != len(labels):
            raise ValueError(f"a label is predicted by more than one group: {labels}")
        for group in self.groups:
            if not group.members:
                raise ValueError(f"label group {group.name!r} has no members")
        if normalization.flux_mean.size != preprocessing.n_pixels:
            raise ValueError(
                f"the normalization has {normalization.flux_mean.size} pixels, the "
                f"preprocessing {preprocessing.n_pixels}"
            )
        self._rows = [normalization.index(g.labels) for g in self.groups]
        for member in self.members():
            member.eval()
        # The version always says whether, and with which scales, σ is calibrated.
        self.set_calibration(calibration)

    def __repr__(self) -> str:
        groups = ", ".join(f"{g.name}×{len(g.members)}" for g in self.groups)
        return f"Ensemble({self.name!r}, version={self.version!r}, groups=[{groups}])"

    @property
    def labels(self) -> list[str]:
        """Output label names: the groups' labels, concatenated in group order."""
        return [label for group in self.groups for label in group.labels]

    def members(self) -> list[nn.Module]:
        return [m for group in self.groups for m in group.members]

    @property
    def device(self) -> torch.device:
        """Where the members are (the first tensor of the first member that has one)."""
        for member in self.members():
            for tensor in itertools.chain(member.parameters(), member.buffers()):
                return tensor.device
        return torch.device("cpu")

    def to(self, device: str | torch.device = "auto") -> Ensemble:
        """Move every member to ``device`` (``auto``: CUDA, then MPS, then CPU); returns self."""
        from lamost_rrnet.devices import select_device

        target = select_device(device) if isinstance(device, str) else torch.device(device)
        for member in self.members():
            member.to(target)
        return self

    def network_input(self, flux_normalized: np.ndarray) -> torch.Tensor:
        """Clip (inference only) and z-score continuum-normalized flux: the members' input."""
        flux = np.asarray(flux_normalized)
        n_pixels = self.preprocessing.n_pixels
        if flux.ndim != 2 or flux.shape[1] != n_pixels:
            raise ValueError(f"expected flux of shape (B, {n_pixels}), got {flux.shape}")
        flux = flux.astype(np.float32, copy=True)
        if self.preprocessing.clip is not None:
            np.clip(flux, *self.preprocessing.clip, out=flux)
        flux -= self.normalization.flux_mean
        flux /= self.normalization.flux_std
        tensor = torch.from_numpy(flux)
        if self.device.type == "cuda":
            # Page-locked memory lets the copy run without blocking, overlapped with the work
            # queued before it on the GPU.
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def predict(
        self, flux_normalized: np.ndarray, batch_size: int = 256, raw_sigma: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """μ and σ, float64 (B, len(labels)) in physical units, from normalized flux (B, 7200).

        σ is calibrated (times :attr:`sigma_scales`) unless ``raw_sigma``, which gives the
        ensemble's own σ. Batches of ``batch_size`` spectra bound the memory. Rows are
        independent: a row of NaN flux gives NaN labels and leaves the others alone.
        """
        flux = np.asarray(flux_normalized)
        if flux.ndim != 2:
            raise ValueError(f"expected flux of shape (B, {self.preprocessing.n_pixels})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, not {batch_size}")
        mu = np.empty((flux.shape[0], len(self.labels)))
        sigma = np.empty_like(mu)
        batches = [
            slice(a, min(a + batch_size, len(flux))) for a in range(0, len(flux), batch_size)
        ]
        threads = torch.get_num_threads()
        shards = min(threads, batch_size // MIN_SHARD_ROWS) if self.device.type == "cpu" else 1
        if shards < 2 or len(flux) < 2 * MIN_SHARD_ROWS:
            for rows in batches:
                self._predict_rows(flux, rows, mu, sigma)
            return mu, self._calibrated(sigma, raw_sigma)
        # On a CPU, the members' small matrix products scale poorly over intra-op threads;
        # one single-threaded shard of each batch per thread gave 1.6-2.0x at 2 threads.
        # Thread counts are per thread for OpenMP, so the workers set theirs, and the caller's
        # (also MKL's process-wide one) is restored afterwards.
        try:
            with ThreadPoolExecutor(
                shards, initializer=torch.set_num_threads, initargs=(1,)
            ) as pool:
                for rows in batches:
                    n = max(1, min(shards, (rows.stop - rows.start) // MIN_SHARD_ROWS))
                    edges = np.linspace(rows.start, rows.stop, n + 1).astype(int)
                    parts = [slice(int(lo), int(hi)) for lo, hi in itertools.pairwise(edges)]
                    list(pool.map(lambda part: self._predict_rows(flux, part, mu, sigma), parts))
        finally:
            torch.set_num_threads(threads)
        return mu, self._calibrated(sigma, raw_sigma)

    def _calibrated(self, sigma: np.ndarray, raw: bool) -> np.ndarray:
        if not raw and self.calibration is not None:
            sigma *= self.sigma_scales
        return sigma

    def _predict_rows(
        self, flux: np.ndarray, rows: slice, mu: np.ndarray, sigma: np.ndarray
    ) -> None:
        """μ and σ of ``flux[rows]`` into the same rows of ``mu`` and ``sigma``."""
        with torch.inference_mode():
            x = self.network_input(flux[rows])
            column = 0
            for group, label_rows in zip(self.groups, self._rows, strict=True):
                end = column + len(group.labels)
                m, s = self._combine(group, x)
                mu[rows, column:end] = m * self.normalization.label_std[label_rows]
                mu[rows, column:end] += self.normalization.label_mean[label_rows]
                sigma[rows, column:end] = s * self.normalization.label_std[label_rows]
                column = end

    @staticmethod
    def _combine(group: LabelGroup, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Paper eq. 3 over the group's members, in z-scored label units (float64)."""
        mus, variances = [], []
        for member in group.members:
            run = getattr(member, "inference", member)
            m, v = run(x)
            mus.append(m.float().cpu().numpy())
            variances.append(v.float().cpu().numpy())
        mu_i = np.stack(mus).astype(np.float64)
        mu = mu_i.mean(axis=0)
        # Eq. 3, σ² = mean(σ_i² + μ_i²) − μ², rearranged as mean(σ_i²) + mean((μ_i − μ)²):
        # the same number without the cancellation of two large terms.
        var = np.stack(variances).astype(np.float64).mean(axis=0)
        var += ((mu_i - mu) ** 2).mean(axis=0)
        return mu, np.sqrt(var)

    # -- the model directory -------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write this ensemble as a model directory (see the module docstring); returns it.

        Each file is written atomically and ``model.yaml``, which lists their hashes, last.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        hashes: dict[str, str] = {}
        groups = []
        for group in self.groups:
            if not _SAFE_NAME.fullmatch(group.name):
                raise ValueError(f"label group name {group.name!r} cannot name a file")
            files = []
            for i, member in enumerate(group.members):
                fname = f"{group.name}{i}.safetensors"
                state = {k: v.detach().cpu().contiguous() for k, v in member.state_dict().items()}
                with atomic_path(directory / fname) as tmp:
                    save_file(state, str(tmp), metadata={"group": group.name, "member": str(i)})
                hashes[fname] = sha256_file(directory / fname)
                files.append(fname)
            groups.append({"name": group.name, "labels": list(group.labels), "members": files})
        self.normalization.save(directory / NORMALIZATION_FILE)
        hashes[NORMALIZATION_FILE] = sha256_file(directory / NORMALIZATION_FILE)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "architecture": self.architecture,
            "groups": groups,
            "normalization": NORMALIZATION_FILE,
            "preprocessing": _plain(self.preprocessing.to_dict()),
            "label_ranges": {k: [lo, hi] for k, (lo, hi) in self.label_ranges.items()},
            "provenance": self.provenance,
        }
        if self.calibration is not None:
            manifest["calibration"] = _plain(self.calibration.to_dict())
        manifest["sha256"] = hashes
        text = yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True)
        atomic_write_bytes(directory / MODEL_FILE, text.encode("utf-8"))
        return directory

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], device: str | torch.device = "auto"
    ) -> Ensemble:
        """Load a model directory written by :meth:`save`, checking every file's sha256.

        A registered name or the published repository's layout is
        :func:`lamost_rrnet.load_model`'s to resolve.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from lamost_rrnet.models import create_model
        from lamost_rrnet.models.registry import load_problem

        directory = Path(directory)
        manifest_path = directory / MODEL_FILE
        if not manifest_path.is_file():
            # Ensemble.load once resolved names too: say where that went.
            raise ModelError(
                f"{directory}: not a model directory (no {MODEL_FILE}); for a registered name "
                "or the published layout, use lamost_rrnet.load_model"
            )
        manifest = _read_manifest(manifest_path)
        hashes = manifest["sha256"]
        for fname, expected in hashes.items():
            path = directory / fname
            if not path.is_file():
                raise ModelError(f"{path}: missing (listed in {manifest_path})")
            if sha256_file(path) != expected:
                raise ModelError(f"{path}: sha256 differs from {manifest_path}; the file changed")
        arch = manifest["architecture"]
        groups = []
        for entry in manifest["groups"]:
            members = []
            for fname in entry["members"]:
                if fname not in hashes:
                    raise ModelError(f"{manifest_path}: no sha256 for member {fname}")
                try:
                    # Built on the meta device, then given the stored tensors: no random
                    # initialization to throw away (0.6 s of a one-file predict).
                    with torch.device("meta"):
                        member = create_model(arch["name"], len(entry["labels"]), **arch["kwargs"])
                    state = load_file(directory / fname)
                    member.load_state_dict(state, strict=True, assign=True)
                except (ValueError, TypeError, RuntimeError, SafetensorError) as exc:
                    raise ModelError(
                        f"{directory / fname}: cannot load this member: {load_problem(exc)}"
                    ) from exc
                members.append(member)
            groups.append(LabelGroup(entry["name"], list(entry["labels"]), members))
        if manifest["normalization"] not in hashes:
            raise ModelError(f"{manifest_path}: no sha256 for {manifest['normalization']}")
        normalization = Normalization.load(directory / manifest["normalization"])
        try:
            calibration = manifest.get("calibration")
            ensemble = cls(
                manifest["name"],
                manifest["version"],
                arch,
                groups,
                normalization,
                PreprocessSpec.from_dict(manifest["preprocessing"]),
                manifest.get("label_ranges") or {},
                manifest.get("provenance") or {},
                None if calibration is None else Calibration.from_dict(calibration),
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelError(f"{manifest_path}: inconsistent model: {exc}") from exc
        return ensemble.to(device)

    @classmethod
    def from_directory(
        cls, directory: str | os.PathLike[str], device: str | torch.device = "cpu"
    ) -> Ensemble:
        """Deprecated: :meth:`load`."""
        warnings.warn(
            "Ensemble.from_directory is deprecated: use Ensemble.load",
            DeprecationWarning,
            stacklevel=2,
        )
        return cls.load(directory, device=device)


def _read_manifest(path: Path) -> dict:
    try:
        manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelError(f"{path}: cannot read the model manifest ({exc})") from exc
    required = ("name", "version", "architecture", "groups", "normalization", "preprocessing")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelError(f"{path}: not a lamost-rrnet model manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ModelError(
            f"{path}: format version {manifest['format_version']} is newer than this "
            f"lamost-rrnet reads ({FORMAT_VERSION}); upgrade lamost-rrnet"
        )
    missing = [k for k in (*required, "sha256") if k not in manifest]
    if missing:
        raise ModelError(f"{path}: missing {', '.join(missing)}")
    arch = manifest["architecture"]
    if not isinstance(arch, dict) or "name" not in arch:
        raise ModelError(f"{path}: architecture needs a name")
    arch.setdefault("kwargs", {})
    if not isinstance(manifest["sha256"], dict) or not isinstance(manifest["groups"], list):
        raise ModelError(f"{path}: sha256 must map file names to hashes, groups be a list")
    files = [*manifest["sha256"], manifest["normalization"]]
    files += [m for g in manifest["groups"] if isinstance(g, dict) for m in g.get("members", [])]
    outside = [f for f in files if not stays_inside(f)]
    if outside:
        raise ModelError(f"{path}: file name {outside[0]!r} is outside the model directory")
    return manifest
