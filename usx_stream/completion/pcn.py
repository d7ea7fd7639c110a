"""Global-feature blocks of the completion network: PCN encoder, residual MLP and the fusion MLP.

Module and parameter names follow the public US-X Complete / VRCNet code (``conv1``..``conv4``,
``conv1``/``conv2``/``conv_res``, ``fc1``/``fc2``) so their checkpoints map onto ours one to one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PCNEncoder(nn.Module):
    """PCN point encoder: shared MLP, max-pool, concat, shared MLP, max-pool.

    The shared MLPs are ``nn.Linear`` on channel-last points (the original's ``Conv1d`` 1x1 is the same map;
    the checkpoint loader drops the kernel axis).

    Parameters
    ----------
    widths : (w1, w2, w3)
        Channels of the shared MLPs (the paper: 128, 256, 512).
    output_size : int
        Size of the global feature (the paper: 1024).
    in_channels : int
        Channels per input point (3: x, y, z).
    """

    def __init__(self, *, widths: tuple[int, int, int], output_size: int, in_channels: int = 3) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.conv1 = nn.Linear(in_channels, w1)
        self.conv2 = nn.Linear(w1, w2)
        self.conv3 = nn.Linear(2 * w2, w3)
        self.conv4 = nn.Linear(w3, output_size)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Encode points.

        Parameters
        ----------
        points : (B, N, 3) tensor

        Returns
        -------
        (B, output_size) tensor
        """
        x = self.conv2(F.relu(self.conv1(points)))
        glob = torch.amax(x, dim=1, keepdim=True)
        x = torch.cat([x, glob.expand(-1, x.shape[1], -1)], dim=2)
        x = self.conv4(F.relu(self.conv3(x)))
        return torch.amax(x, dim=1)


class LinearResBlock(nn.Module):
    """``conv2(relu(conv1(relu(x)))) + conv_res(x)`` with linear layers (VRCNet ``Linear_ResBlock``)."""

    def __init__(self, input_size: int, output_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Linear(input_size, input_size)
        self.conv2 = nn.Linear(input_size, output_size)
        self.conv_res = nn.Linear(input_size, output_size)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """(B, input_size) -> (B, output_size)."""
        return self.conv2(F.relu(self.conv1(F.relu(feature)))) + self.conv_res(feature)


class FeatureSelector(nn.Module):
    """Early fusion: concatenated US and X-ray features (2F) -> 2F -> F, ReLU after each layer."""

    def __init__(self, feature_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2 * feature_size, 2 * feature_size)
        self.fc2 = nn.Linear(2 * feature_size, feature_size)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """(B, 2F) -> (B, F)."""
        return F.relu(self.fc2(F.relu(self.fc1(feature))))
