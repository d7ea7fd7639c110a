"""RENet: the self-attention refinement encoder of VRCNet, in pure torch.

Structure and parameter names follow the public VRCNet / US-X Complete code (``SA_module``,
``SK_SA_module``, ``SKN_Res_unit``, ``SA_SKN_Res_encoder``), so their state dicts load with only the kernel
axes of the 1x1 convolutions dropped. What changes is how it is computed, not what:

* tensors are channel-last ``(B, N, C)`` and the 1x1 convolutions are ``nn.Linear`` (one GEMM; mkldnn's
  1x1 convolution on ``B x C x 1 x N`` was ~10x slower here on CPU);
* the convolutions the original applies to every gathered neighbour (``conv2``, ``conv3`` on
  ``B x C x K x N``) run once per point before the gather — a pointwise linear map commutes with a gather,
  so this is the same function at 1/K of the cost;
* one kNN per level with the largest k of the kernel list (sorted), sliced for the smaller ones.

Down-sampling ("edge-preserving pooling") picks its centre points either with furthest point sampling
(``pool_index=None``, as the original) or with a fixed index list: when every input part arrives in
furthest-point order, a prefix of each part *is* a furthest-point subset, so the fixed index gives the same
kind of subset with no sequential loop, and the exported graph stays small.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from usx_stream.completion import ops


class SAModule(nn.Module):
    """Point self-attention over a kNN neighbourhood (VRCNet ``SA_module``)."""

    def __init__(self, in_planes: int, rel_planes: int, mid_planes: int, out_planes: int,
                 share_planes: int = 8, k: int = 16) -> None:
        super().__init__()
        if mid_planes % share_planes or mid_planes // share_planes == 0:
            raise ValueError(f"mid_planes ({mid_planes}) must be a positive multiple of "
                             f"share_planes ({share_planes})")
        self.share_planes = share_planes
        self.k = k
        self.conv1 = nn.Linear(in_planes, rel_planes)
        self.conv2 = nn.Linear(in_planes, rel_planes)
        self.conv3 = nn.Linear(in_planes, mid_planes)
        # Indices 1 and 3 hold the weights, as in the original nn.Sequential(ReLU, Conv, ReLU, Conv).
        self.conv_w = nn.Sequential(
            nn.ReLU(),
            nn.Linear(rel_planes * (k + 1), mid_planes // share_planes, bias=False),
            nn.ReLU(),
            nn.Linear(mid_planes // share_planes, k * mid_planes // share_planes),
        )
        self.conv_out = nn.Linear(mid_planes, out_planes)

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """(B, N, C) features, (B, N, k) neighbour indices -> (B, N, out_planes)."""
        b, n, _ = x.shape
        identity = x
        x = F.relu(x)
        x1 = self.conv1(x)
        x2 = ops.index_points(self.conv2(x), idx)  # (B, N, k, rel)
        x3 = ops.index_points(self.conv3(x), idx)  # (B, N, k, mid)
        # The original flattens (rel, k) with k fastest: channel r * k + j.
        w = self.conv_w(torch.cat([x1, x2.transpose(2, 3).reshape(b, n, -1)], dim=2))
        groups = w.shape[2] // self.k
        w = w.reshape(b, n, groups, self.k).transpose(2, 3).unsqueeze(3)  # (B, N, k, 1, groups)
        # The original tiles w share_planes times along channels (channel s * groups + g); broadcasting
        # over the share axis does the same without the copy.
        out = (x3.reshape(b, n, self.k, self.share_planes, groups) * w).sum(dim=2).reshape(b, n, -1)
        return self.conv_out(F.relu(out)) + identity


class SKSAModule(nn.Module):
    """Selective-kernel fusion of SA modules with different k (VRCNet ``SK_SA_module``)."""

    def __init__(self, in_planes: int, rel_planes: int, mid_planes: int, out_planes: int,
                 share_planes: int = 8, k: Sequence[int] = (16,), r: int = 2, min_width: int = 32) -> None:
        super().__init__()
        d = max(int(out_planes / r), min_width)
        self.sams = nn.ModuleList(
            SAModule(in_planes, rel_planes, mid_planes, out_planes, share_planes, ki) for ki in k)
        self.fc = nn.Linear(out_planes, d)
        self.fcs = nn.ModuleList(nn.Linear(d, out_planes) for _ in k)

    def forward(self, x: torch.Tensor, idxs: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, N, C) features, one index tensor per kernel -> (B, N, out_planes)."""
        feas = torch.stack([F.relu(sam(x, idx)) for sam, idx in zip(self.sams, idxs)], dim=1)
        fea_z = self.fc(feas.sum(dim=1).mean(dim=1))
        attention = torch.softmax(torch.stack([fc(fea_z) for fc in self.fcs], dim=1), dim=1)
        return (feas * attention.unsqueeze(2)).sum(dim=1)


class SKNResUnit(nn.Module):
    """Residual unit around ``layers`` SK-SA modules (VRCNet ``SKN_Res_unit``)."""

    def __init__(self, input_size: int, output_size: int, k: Sequence[int], layers: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Linear(input_size, output_size, bias=False)
        self.sam = nn.ModuleList(
            SKSAModule(output_size, output_size // 16, output_size // 4, output_size, 8, k) for _ in range(layers))
        self.conv2 = nn.Linear(output_size, output_size, bias=False)
        self.conv_res = nn.Linear(input_size, output_size, bias=False)

    def forward(self, feat: torch.Tensor, idxs: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.conv1(feat)
        for block in self.sam:
            x = block(x, idxs)
        return self.conv2(F.relu(x)) + self.conv_res(feat)


def ordered_pool_indices(segments: Sequence[int], levels: Sequence[int]) -> list[torch.Tensor]:
    """Fixed pooling indices that keep a prefix of every segment at every level.

    Parameters
    ----------
    segments : sizes of the concatenated parts at level 1 (e.g. coarse, partial, labelmap)
    levels : number of points at each pooled level, decreasing

    Returns
    -------
    list of (levels[i],) int64 tensors
        Index ``i`` selects level ``i+1`` points from level ``i`` points (level 0 = the concatenation).
        Each part keeps its share of the points, rounded down; the remainder goes to the first part.
    """
    sizes = list(segments)
    out = []
    for target in levels:
        total = sum(sizes)
        if not 0 < target <= total:
            raise ValueError(f"pooled level size {target} must be in (0, {total}]")
        new = [s * target // total for s in sizes]
        new[0] += target - sum(new)
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        out.append(torch.cat([torch.arange(s, s + c) for s, c in zip(starts, new)]))
        sizes = new
    return out


class RefinementEncoder(nn.Module):
    """Multi-scale SA encoder with edge-preserving pooling and three-NN unpooling (``SA_SKN_Res_encoder``).

    Parameters
    ----------
    input_size : channels per input point (3, or 6 with the one-hot source tag)
    k : kNN sizes of the selective kernels
    pk : neighbours max-pooled by edge-preserving pooling
    output_size : channels of the per-point output feature
    layers : SK-SA modules per level (4 levels)
    pts_num : points kept by the three poolings
    init_channel : channels of level 1 (doubles per level)
    global_size, fc_hidden : global feature (conv5) and its MLP hidden size
    pool_index : fixed pooling indices (``ordered_pool_indices``); None samples with FPS
    """

    def __init__(self, *, input_size: int, k: Sequence[int], pk: int, output_size: int,
                 layers: Sequence[int], pts_num: Sequence[int], init_channel: int = 64,
                 global_size: int = 1024, fc_hidden: int = 512,
                 pool_index: Sequence[torch.Tensor] | None = None) -> None:
        super().__init__()
        c1 = init_channel
        c2, c3, c4 = 2 * c1, 4 * c1, 8 * c1
        self.sam_res1 = SKNResUnit(input_size, c1, k, int(layers[0]))
        self.sam_res2 = SKNResUnit(c2, c2, k, int(layers[1]))
        self.sam_res3 = SKNResUnit(c3, c3, k, int(layers[2]))
        self.sam_res4 = SKNResUnit(c4, c4, k, int(layers[3]))
        self.conv5 = nn.Linear(c4, global_size)
        self.fc1 = nn.Linear(global_size, fc_hidden)
        self.fc2 = nn.Linear(fc_hidden, global_size)
        self.conv6 = nn.Linear(c4 + global_size, c4)
        self.conv7 = nn.Linear(c3 + c4, c3)
        self.conv8 = nn.Linear(c2 + c3, c2)
        self.conv9 = nn.Linear(c1 + c2, c1)
        self.conv_out = nn.Linear(c1, output_size)
        self.dropout = nn.Dropout()
        self.k = list(k)
        self.pk = pk
        self.pts_num = list(pts_num)
        self.ordered = pool_index is not None
        for i, index in enumerate(pool_index or []):
            self.register_buffer(f"pool_index{i}", index.clone(), persistent=False)

    def _neighbours(self, points: torch.Tensor) -> list[torch.Tensor]:
        kmax = max(self.k)
        idx = ops.knn_self(points, kmax)
        return [idx if ki == kmax else idx[:, :, :ki] for ki in self.k]

    def _pool(self, level: int, feat: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Edge-preserving pooling: (B, N, C), (B, N, 3) -> (B, n, 2C), (B, n, 3)."""
        if self.ordered:
            index = getattr(self, f"pool_index{level}")
            centre_feat = feat.index_select(1, index)
            centres = points.index_select(1, index)
        else:
            p_idx = ops.furthest_point_sample_fast(points.detach(), self.pts_num[level])
            centre_feat = ops.index_points(feat, p_idx)
            centres = ops.index_points(points, p_idx)
        _, pn_idx = ops.knn(centres, points, min(self.pk, points.shape[1]))
        neighbour_feat = torch.amax(ops.index_points(feat, pn_idx), dim=2)
        return torch.cat([centre_feat, neighbour_feat], dim=2), centres

    @staticmethod
    def _unpool(features: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        idx, weight = ops.three_nn_weights(tgt, src)
        return ops.three_interpolate_rows(features, idx, weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N, input_size) with x, y, z first -> (B, N, output_size)."""
        pt1 = features[:, :, 0:3]
        x1 = F.relu(self.sam_res1(features, self._neighbours(pt1)))
        x, pt2 = self._pool(0, x1, pt1)
        x2 = F.relu(self.sam_res2(x, self._neighbours(pt2)))
        x, pt3 = self._pool(1, x2, pt2)
        x3 = F.relu(self.sam_res3(x, self._neighbours(pt3)))
        x, pt4 = self._pool(2, x3, pt3)
        x4 = F.relu(self.sam_res4(x, self._neighbours(pt4)))
        g = torch.amax(self.conv5(x4), dim=1)
        if self.training:  # (eval-mode dropout is the identity; leaving it out keeps it out of exports)
            g = self.dropout(F.relu(self.fc2(self.dropout(F.relu(self.fc1(g))))))
        else:
            g = F.relu(self.fc2(F.relu(self.fc1(g))))
        x = F.relu(self.conv6(torch.cat([g.unsqueeze(1).expand(-1, x4.shape[1], -1), x4], dim=2)))
        x = F.relu(self.conv7(torch.cat([self._unpool(x, pt4, pt3), x3], dim=2)))
        x = F.relu(self.conv8(torch.cat([self._unpool(x, pt3, pt2), x2], dim=2)))
        x = F.relu(self.conv9(torch.cat([self._unpool(x, pt2, pt1), x1], dim=2)))
        return self.conv_out(x)
