"""lamost-rrnet: RRNet stellar labels from LAMOST medium-resolution spectra."""

import logging

from lamost_rrnet._version import __version__
from lamost_rrnet.catalogue import catalogue_columns
from lamost_rrnet.errors import (
    CatalogueError,
    CoverageError,
    DatasetError,
    ModelError,
    OutputExistsError,
    RRNetError,
    SpectrumError,
)
from lamost_rrnet.predict import predict_files
from lamost_rrnet.spectra.io import Arm, MRSFile, Spectrum, read_mrs, write_mrs
from lamost_rrnet.spectra.preprocess import (
    RRNET2022,
    PreprocessSpec,
    normalize,
    outlier_stats,
    preprocess,
    resample,
)

# The library logs to children of this logger and shows nothing itself: the application
# chooses where messages go (the CLI: stderr; a script: logging.basicConfig).
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "RRNET2022",
    "Arm",
    "CatalogueError",
    "CoverageError",
    "DatasetError",
    "MRSFile",
    "ModelError",
    "OutputExistsError",
    "PreprocessSpec",
    "RRNetError",
    "Spectrum",
    "SpectrumError",
    "__version__",
    "catalogue_columns",
    "merge_catalogues",
    "normalize",
    "outlier_stats",
    "predict_files",
    "preprocess",
    "read_mrs",
    "resample",
    "write_mrs",
    "Ensemble",
    "LabelGroup",
    "Normalization",
    "load_model",
    "train_ensemble",
]

# The model API needs torch, and merging is a job of its own: each is imported on first use
# so that `lamost-rrnet --help`, the spectrum tools and a one-file predict start fast.
_LAZY = {
    "merge_catalogues": "lamost_rrnet.merge",
    "Ensemble": "lamost_rrnet.ensemble",
    "LabelGroup": "lamost_rrnet.ensemble",
    "Normalization": "lamost_rrnet.ensemble",
    "load_model": "lamost_rrnet.model_resolution",
    "train_ensemble": "lamost_rrnet.training",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lamost_rrnet' has no attribute {name!r}")
