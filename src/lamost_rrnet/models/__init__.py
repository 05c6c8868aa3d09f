"""The networks: RRNet (with its Nr/Ns/mode variants), the paper's ResNet, StarNet, StarNet-R,
and the classical baseline, a quadratic Cannon.

``create_model(arch, n_labels, **kwargs)`` builds any of them by name; ``list_models()`` lists
the names. Every model's ``forward(x)`` maps z-scored flux (B, 7200) to ``(mu, var)``.
"""

# Importing the architecture modules registers them.
from lamost_rrnet.models.cannon import Cannon
from lamost_rrnet.models.registry import GaussianNet, create_model, list_models, register_model
from lamost_rrnet.models.rrnet import MODES, RRNet
from lamost_rrnet.models.starnet import StarNet

__all__ = [
    "Cannon",
    "MODES",
    "GaussianNet",
    "RRNet",
    "StarNet",
    "create_model",
    "list_models",
    "register_model",
]
