"""Training deep ensembles: ``train_ensemble(dataset, out_dir, members=6, ...)``.

- :mod:`~lamost_rrnet.training.loop`: the run (epochs, checkpoints, resume, time budget,
  the model directory);
- :mod:`~lamost_rrnet.training.members`: a shard of a group's members and the recipe;
- :mod:`~lamost_rrnet.training.stacked`: members as one batched computation;
- :mod:`~lamost_rrnet.training.data`, :mod:`~lamost_rrnet.training.groups`,
  :mod:`~lamost_rrnet.training.history`, :mod:`~lamost_rrnet.training.checkpoint`.
"""

from lamost_rrnet.training.groups import GroupSpec, read_groups_file, resolve_groups
from lamost_rrnet.training.loop import train_ensemble
from lamost_rrnet.training.members import Recipe

__all__ = ["GroupSpec", "Recipe", "read_groups_file", "resolve_groups", "train_ensemble"]
