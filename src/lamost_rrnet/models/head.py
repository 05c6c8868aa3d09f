"""The fully connected head every architecture shares: μ and a softplus variance per label."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GaussianHead(nn.Module):
    """Linear(in, 256) → ReLU → Dropout → Linear(256, 128) → ReLU → Dropout → (μ, variance).

    The variance is ``softplus(Linear(128, n))``, in z-scored label units (docs/models.md).
    """

    def __init__(self, in_features: int, n_labels: int, dropout: float = 0.3):
        super().__init__()
        self.fc1 = nn.Linear(in_features, 256)
        self.fc2 = nn.Linear(256, 128)
        self.mu = nn.Linear(128, n_labels)
        self.var = nn.Linear(128, n_labels)
        self.dropout = float(dropout)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.dropout(F.relu(self.fc1(h)), self.dropout, self.training)
        h = F.dropout(F.relu(self.fc2(h)), self.dropout, self.training)
        return self.mu(h), F.softplus(self.var(h))
