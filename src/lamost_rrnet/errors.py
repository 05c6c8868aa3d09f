"""The exception types lamost-rrnet raises for bad inputs and environments.

Every one of them means "the inputs or the environment made this fail": the
command line turns them into one line on stderr and exit code 1.
"""


class RRNetError(Exception):
    """Base class: a problem with the inputs or the environment (CLI exit 1)."""


class SpectrumError(RRNetError):
    """A spectrum file cannot be read or preprocessed. The message names the file."""


class CoverageError(SpectrumError):
    """The corrected wavelengths do not cover the network's pixel grid."""


class FileTooLarge(SpectrumError):
    """A spectrum file would need more memory than the per-file limit to read."""

    status = "too_large"  # the catalogue status of its row


class CatalogueError(RRNetError):
    """A catalogue or table is unreadable, lacks columns, or gives no usable rows."""


class DatasetError(RRNetError):
    """A prepared dataset is missing, malformed or unsuitable for the request."""


class ModelError(RRNetError):
    """A model cannot be found, downloaded, verified or loaded."""


class OutputExistsError(RRNetError):
    """An output already exists and neither resume nor overwrite was asked for."""


class OutputBusyError(RRNetError):
    """Another run is writing the same output right now."""


class UsageError(ValueError):
    """The call asks for something that cannot be (a wrong command line): CLI exit 2."""
