"""lamost-rrnet: RRNet stellar labels from LAMOST medium-resolution spectra."""

from lamost_rrnet._version import __version__
from lamost_rrnet.errors import (
    CatalogueError,
    CoverageError,
    DatasetError,
    ModelError,
    OutputExistsError,
    RRNetError,
    SpectrumError,
)
from lamost_rrnet.spectra.io import Arm, MRSFile, Spectrum, read_mrs, write_mrs
from lamost_rrnet.spectra.preprocess import (
    RRNET2022,
    PreprocessSpec,
    normalize,
    outlier_stats,
    preprocess,
    resample,
)

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
    "normalize",
    "outlier_stats",
    "preprocess",
    "read_mrs",
    "resample",
    "write_mrs",
]
