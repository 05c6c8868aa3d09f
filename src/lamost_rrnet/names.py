"""Names that the command line shows as defaults, in a module free of heavy imports: the
default model and the built-in label groupings of :mod:`lamost_rrnet.training.groups`."""

from __future__ import annotations

#: The registry name of the published ensemble, the model used when none is given.
DEFAULT_MODEL = "rrnet2022"

#: The paper's SP/CA groups; one group of every label of the dataset.
GROUPS_PAPER = "paper"
GROUPS_SINGLE = "single"
BUILTIN_GROUPS = (GROUPS_PAPER, GROUPS_SINGLE)
