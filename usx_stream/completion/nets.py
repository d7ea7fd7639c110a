"""The completion network: VRCNet with an X-ray labelmap branch (US-X Complete), in pure torch.

API
---
``ModelConfig`` (frozen dataclass) with presets ``ModelConfig.small(multimodal=True)`` (trains on a 2-core
CPU) and ``ModelConfig.paper(multimodal=True)`` (the published configuration); ``build_model(cfg)`` returns a
``CompletionNet``. All points are in the canonical per-vertebra frame of ``completion.normalize`` (unit scale).

``net(partial, labelmap=None, gt=None)``

* ``partial`` (B, cfg.num_partial, 3), ``labelmap`` (B, cfg.num_labelmap, 3) for multimodal models (ignored
  by US-only ones), ``gt`` (B, G, 3) with G >= cfg.num_partial. Inputs should arrive in furthest-point order
  (``normalize.resample``): the "ordered" pooling then keeps furthest-point subsets.
* ``net.train()`` and ``gt`` given -> dict for the loss of DESIGN §4. The batch is doubled as in VRCNet: rows
  ``[:B]`` are the completion path (posterior from partial [+ labelmap]), rows ``[B:]`` the reconstruction path
  (prior from the ground truth). Keys: ``coarse_raw`` (2B, num_coarse_raw, 3), ``coarse_high``
  (2B, num_refine * up_ratio, 3), ``coarse`` and ``fine`` (2B, num_out, 3), ``gt`` (2B, G, 3), ``kl_rec`` and
  ``kl_gen`` (B, latent) element-wise KL terms. Loss::

      cd = lambda a, b: CD_p(a, b) per sample  # (mean sqrt d1 + mean sqrt d2) / 2
      loss = (10 * cd(coarse_raw, gt) + 0.5 * cd(coarse_high, gt) + cd(coarse, gt) + alpha * cd(fine, gt)).mean()
      loss += 20 * (kl_rec.mean() + kl_gen.mean())

* ``net.eval()`` (or no ``gt``) -> ``{"fine": (B, num_out, 3), "coarse": (B, num_coarse_raw, 3)}``,
  deterministic: the latent is the posterior mean.

``net.sample(partial, labelmap, k)`` -> (B, k, num_out, 3): k completions with the latent drawn from the
posterior; ``net.mean_and_samples(partial, labelmap, eps)`` -> (B, 1 + K, num_out, 3): the mean completion and
K draws in one decoder batch. When ``net.index_correspondence`` (the "ordered" configurations) point i of every
draw comes from the same network slot, so ``point_uncertainty(samples)`` (B, num_out) is a per-point spread
(unit scale); ``completion.uncertainty`` turns draws into the spread in mm the node publishes. ``InferenceModule(net)`` is the
export/engine wrapper (``forward(partial[, labelmap]) -> fine``).

Architecture (DESIGN §4, module names as the public code so its checkpoints load): PCN encoders for the
partial cloud and the labelmap, fusion MLP (2F -> 2F -> F) into the VAE posterior (latent 128), reconstruction
path from the ground truth in training, coarse decoder (num_coarse_raw points), RENet on the one-hot tagged
coarse + partial + labelmap points, point-wise head. Where it differs from the published network, for speed:
RENet sees a furthest-point subset of the inputs (``refine_partial``, ``refine_labelmap``) and predicts
``up_ratio`` points per refined point, and its pooling keeps fixed furthest-point prefixes instead of running
furthest point sampling ("ordered"; ``ModelConfig.paper()`` keeps the published behaviour, "fps").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from usx_stream.completion import ops
from usx_stream.completion.pcn import FeatureSelector, LinearResBlock, PCNEncoder
from usx_stream.completion.renet import RefinementEncoder, ordered_pool_indices

SAMPLING_MODES = ("ordered", "fps")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the completion network. Point counts are per vertebra.

    The encoders see all ``num_partial`` / ``num_labelmap`` points. RENet sees ``num_refine`` (derived) =
    num_coarse_raw + refine_partial + refine_labelmap points (the first ``refine_*`` of each input, i.e. a
    furthest-point subset when inputs come in furthest-point order; the paper feeds all of them), and its
    point-wise head predicts ``up_ratio`` points per refined point; the output keeps ``num_out`` of those.
    Fewer refinement points is where the CPU time goes: RENet's first level costs a kNN over num_refine².
    """

    multimodal: bool = True
    num_partial: int = 1024
    num_labelmap: int = 256
    num_coarse_raw: int = 512
    num_out: int = 2048
    latent: int = 128
    feature_size: int = 256
    pcn_widths: tuple[int, int, int] = (64, 128, 256)
    refine_partial: int = 384
    refine_labelmap: int = 128
    up_ratio: int = 2
    points_label: bool = True
    renet_channels: int = 32
    renet_layers: tuple[int, int, int, int] = (1, 1, 1, 1)
    renet_global: int = 256
    renet_fc_hidden: int = 128
    dense_feature: int = 64
    expand_feature: int = 32
    knn: tuple[int, ...] = (16,)
    pool_k: int = 8
    pool_points: tuple[int, int, int] = (512, 256, 128)
    sampling: str = "ordered"

    def __post_init__(self) -> None:
        for name in ("num_partial", "num_coarse_raw", "num_out", "latent", "feature_size", "pool_k",
                     "refine_partial", "up_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.multimodal and self.num_labelmap < 1:
            raise ValueError(f"ModelConfig.num_labelmap must be >= 1 for a multimodal model, got {self.num_labelmap}")
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"ModelConfig.sampling must be one of {SAMPLING_MODES}, got {self.sampling!r}")
        if self.renet_channels < 32 or self.renet_channels % 32:
            raise ValueError(f"ModelConfig.renet_channels must be a multiple of 32, got {self.renet_channels}")
        if self.refine_partial > self.num_partial:
            raise ValueError(f"ModelConfig.refine_partial ({self.refine_partial}) exceeds "
                             f"num_partial ({self.num_partial})")
        if self.multimodal and not 0 <= self.refine_labelmap <= self.num_labelmap:
            raise ValueError(f"ModelConfig.refine_labelmap must be in [0, {self.num_labelmap}], "
                             f"got {self.refine_labelmap}")
        if self.num_refine * self.up_ratio < self.num_out:
            raise ValueError(f"ModelConfig.num_out ({self.num_out}) exceeds the predicted points "
                             f"({self.num_refine} x {self.up_ratio})")
        sizes = (self.num_refine, *self.pool_points)
        if any(b >= a for a, b in zip(sizes, sizes[1:])) or min(self.pool_points) < max(3, max(self.knn)):
            raise ValueError(f"ModelConfig.pool_points must decrease from {self.num_refine} and stay >= "
                             f"max(knn), got {self.pool_points}")
        if max(self.knn) > ops.MAX_TOPK:
            raise ValueError(f"ModelConfig.knn must be <= {ops.MAX_TOPK}, got {self.knn}")

    @property
    def refine_segments(self) -> tuple[int, ...]:
        """Sizes of the parts RENet sees, in order: coarse, partial[, labelmap]."""
        parts = [self.num_coarse_raw, self.refine_partial]
        if self.multimodal and self.refine_labelmap > 0:
            parts.append(self.refine_labelmap)
        return tuple(parts)

    @property
    def num_refine(self) -> int:
        return sum(self.refine_segments)

    @classmethod
    def small(cls, multimodal: bool = True) -> "ModelConfig":
        """CPU configuration: 1024 partial + 256 labelmap points in, RENet on 1024 points, 2048 out."""
        if multimodal:
            return cls(multimodal=True)
        return cls(multimodal=False, num_labelmap=0, refine_labelmap=0, num_coarse_raw=640)

    @classmethod
    def paper(cls, multimodal: bool = True) -> "ModelConfig":
        """The published configuration (4096 points in and out, 1024-d features, RENet width 64)."""
        return cls(multimodal=multimodal, num_partial=4096, num_labelmap=4096 if multimodal else 0,
                   num_coarse_raw=2048, num_out=4096, refine_partial=4096,
                   refine_labelmap=4096 if multimodal else 0, up_ratio=1, feature_size=1024,
                   pcn_widths=(128, 256, 512), renet_channels=64,
                   renet_global=1024, renet_fc_hidden=512, dense_feature=256, expand_feature=64,
                   knn=(16,), pool_k=10, pool_points=(1536, 768, 384), sampling="fps")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


def _source_tags(segments: tuple[int, ...]) -> torch.Tensor:
    """One-hot source tags (1, N, 3): coarse [1,0,0], partial [0,1,0], labelmap [0,0,1]."""
    tags = torch.zeros(1, sum(segments), 3)
    start = 0
    for i, size in enumerate(segments):
        tags[0, start:start + size, i] = 1.0
        start += size
    return tags


class Refiner(nn.Module):
    """Coarse decoder + RENet + point-wise head (the MSAP_SKN decoder of the published configuration)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        f = cfg.feature_size
        self.fc1 = nn.Linear(f, f)
        self.fc2 = nn.Linear(f, f)
        self.fc3 = nn.Linear(f, cfg.num_coarse_raw * 3)
        segments = cfg.refine_segments
        ordered = cfg.sampling == "ordered"
        self.encoder = RefinementEncoder(
            input_size=6 if cfg.points_label else 3, k=cfg.knn, pk=cfg.pool_k, output_size=cfg.dense_feature,
            layers=cfg.renet_layers, pts_num=cfg.pool_points, init_channel=cfg.renet_channels,
            global_size=cfg.renet_global, fc_hidden=cfg.renet_fc_hidden,
            pool_index=ordered_pool_indices(segments, cfg.pool_points) if ordered else None)
        self.conv_cup1 = nn.Linear(cfg.dense_feature, cfg.expand_feature)
        self.conv_cup2 = nn.Linear(cfg.expand_feature, 3 * cfg.up_ratio)
        self.register_buffer("tags", _source_tags(segments), persistent=False)
        if ordered and cfg.num_refine * cfg.up_ratio > cfg.num_out:
            expanded = [s * cfg.up_ratio for s in segments]
            self.register_buffer("out_index", ordered_pool_indices(expanded, [cfg.num_out])[0], persistent=False)
        else:
            self.out_index = None

    def forward(self, feat: torch.Tensor, partial: torch.Tensor, labelmap: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Global feature (B, F), partial (B, N, 3) [and labelmap (B, M, 3)].

        Returns coarse_raw (B, num_coarse_raw, 3), coarse_high (B, num_refine * up_ratio, 3) (the up_ratio
        points of refined point i at rows i * up_ratio ...), fine (B, num_out, 3).
        """
        b = feat.shape[0]
        # The original lays fc3's output out coordinate-major (view(B, 3, N)); keep that for its weights.
        raw = self.fc3(F.relu(self.fc2(F.relu(self.fc1(feat)))))
        coarse_raw = raw.reshape(b, 3, self.cfg.num_coarse_raw).transpose(1, 2)
        parts = [coarse_raw, _prefix(partial, self.cfg.refine_partial)]
        if len(self.cfg.refine_segments) == 3:
            parts.append(_prefix(labelmap, self.cfg.refine_labelmap))
        points = torch.cat(parts, dim=1)
        if self.cfg.points_label:
            points = torch.cat([points, self.tags.expand(b, -1, -1)], dim=2)
        dense = self.encoder(points)
        coarse_high = self.conv_cup2(F.relu(self.conv_cup1(dense))).reshape(b, -1, 3)
        if coarse_high.shape[1] == self.cfg.num_out:
            fine = coarse_high
        elif self.out_index is not None:
            fine = coarse_high.index_select(1, self.out_index)
        else:
            order = ops.furthest_point_sample_fast(coarse_high.detach(), self.cfg.num_out)
            fine = ops.index_points(coarse_high, order)
        return coarse_raw, coarse_high, fine


def _prefix(points: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` points (a full-length slice would export as an alias node)."""
    return points if count == points.shape[1] else points[:, :count]


def _gaussian(o: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    mu, std = torch.split(o, size, dim=1)
    return mu, F.softplus(std)


def _kl(mu1: torch.Tensor, std1: torch.Tensor, mu2: torch.Tensor, std2: torch.Tensor) -> torch.Tensor:
    """Element-wise KL(N(mu1, std1) || N(mu2, std2))."""
    var_ratio = (std1 / std2) ** 2
    return 0.5 * (var_ratio + ((mu1 - mu2) / std2) ** 2 - 1.0 - torch.log(var_ratio))


class CompletionNet(nn.Module):
    """VRCNet-style completion with optional X-ray labelmap fusion (see the module docstring)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        f = cfg.feature_size
        self.encoder_pcd = PCNEncoder(widths=cfg.pcn_widths, output_size=f)
        if cfg.multimodal:
            self.encoder_labelmap = PCNEncoder(widths=cfg.pcn_widths, output_size=f)
            self.feature_selector = FeatureSelector(f)
        self.posterior_infer1 = LinearResBlock(f, f)
        self.posterior_infer2 = LinearResBlock(f, 2 * cfg.latent)
        self.prior_infer = LinearResBlock(f, 2 * cfg.latent)
        self.generator = LinearResBlock(cfg.latent, f)
        self.decoder = Refiner(cfg)

    def _check(self, partial: torch.Tensor, labelmap: torch.Tensor | None) -> None:
        if partial.dim() != 3 or tuple(partial.shape[1:]) != (self.cfg.num_partial, 3):
            raise ValueError(f"partial must be (B, {self.cfg.num_partial}, 3), got {tuple(partial.shape)}")
        if self.cfg.multimodal:
            if labelmap is None or tuple(labelmap.shape) != (partial.shape[0], self.cfg.num_labelmap, 3):
                got = None if labelmap is None else tuple(labelmap.shape)
                raise ValueError(f"labelmap must be (B, {self.cfg.num_labelmap}, 3), got {got}")

    def _posterior(self, feat_x: torch.Tensor, labelmap: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.multimodal:
            fused = self.feature_selector(torch.cat([feat_x, self.encoder_labelmap(labelmap)], dim=1))
        else:
            fused = feat_x
        return _gaussian(self.posterior_infer2(self.posterior_infer1(fused)), self.cfg.latent)

    def forward(self, partial: torch.Tensor, labelmap: torch.Tensor | None = None,
                gt: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        self._check(partial, labelmap)
        if self.training and gt is not None:
            return self._forward_train(partial, labelmap, gt)
        lm = labelmap if self.cfg.multimodal else None
        feat = self.encoder_pcd(partial)
        q_mu, _ = self._posterior(feat, lm)
        coarse_raw, _, fine = self.decoder(feat + self.generator(q_mu), partial, lm)
        return {"fine": fine, "coarse": coarse_raw}

    def _forward_train(self, partial: torch.Tensor, labelmap: torch.Tensor | None,
                       gt: torch.Tensor) -> dict[str, torch.Tensor]:
        if gt.dim() != 3 or gt.shape[0] != partial.shape[0] or gt.shape[2] != 3 or gt.shape[1] < self.cfg.num_partial:
            raise ValueError(f"gt must be (B, >= {self.cfg.num_partial}, 3), got {tuple(gt.shape)}")
        with torch.no_grad():
            y = ops.index_points(gt, ops.furthest_point_sample_fast(gt, self.cfg.num_partial))
        x = partial
        lm = labelmap if self.cfg.multimodal else None
        feat_x, feat_y = self.encoder_pcd(torch.cat([x, y], dim=0)).chunk(2)
        q_mu, q_std = self._posterior(feat_x, lm)
        p_mu, p_std = _gaussian(self.prior_infer(feat_y), self.cfg.latent)
        z = torch.cat([q_mu + q_std * torch.randn_like(q_std), p_mu + p_std * torch.randn_like(p_std)], dim=0)
        feat = torch.cat([feat_x, feat_x], dim=0) + self.generator(z)
        lm2 = torch.cat([lm, lm], dim=0) if lm is not None else None
        coarse_raw, coarse_high, fine = self.decoder(feat, torch.cat([x, x], dim=0), lm2)
        return {
            "coarse_raw": coarse_raw, "coarse_high": coarse_high, "coarse": fine, "fine": fine,
            "gt": torch.cat([gt, gt], dim=0),
            "kl_rec": _kl(torch.zeros_like(p_mu), torch.ones_like(p_std), p_mu, p_std),
            "kl_gen": _kl(p_mu.detach(), p_std.detach(), q_mu, q_std),
        }

    @property
    def index_correspondence(self) -> bool:
        """True when output point i of every latent draw comes from the same network slot.

        The output is then a fixed function of the slots: ``fine`` is ``coarse_high`` itself or a fixed
        ``index_select`` of it ("ordered" sampling), and slot i of ``coarse_high`` is always the head's output
        for refinement input i (coarse slot, partial point or labelmap point, which are the same inputs for
        every draw). With furthest point sampling of ``coarse_high`` (``ModelConfig.paper()``) the kept points
        and their order depend on the draw, and point i of two draws are unrelated.
        """
        d = self.decoder
        return d.out_index is not None or self.cfg.num_refine * self.cfg.up_ratio == self.cfg.num_out

    def mean_and_samples(self, partial: torch.Tensor, labelmap: torch.Tensor | None,
                         eps: torch.Tensor) -> torch.Tensor:
        """The posterior-mean completion and K draws of the latent, decoded in one batch of B x (1 + K).

        Parameters
        ----------
        partial : (B, num_partial, 3) tensor, unit frame
        labelmap : (B, num_labelmap, 3) tensor or None (US-only models)
        eps : (K, B, latent) tensor
            Standard normal draws; draw k of vertebra b uses ``z = mu + std * eps[k, b]``. Given by the
            caller (no random generator inside), so a graph of this function can be traced and a run replayed.

        Returns
        -------
        (B, 1 + K, num_out, 3) tensor, unit frame: row 0 is what ``forward`` returns (latent = posterior
        mean), rows 1.. the draws.
        """
        self._check(partial, labelmap)
        b = partial.shape[0]
        if eps.dim() != 3 or eps.shape[1] != b or eps.shape[2] != self.cfg.latent:
            raise ValueError(f"eps must be (K, {b}, {self.cfg.latent}), got {tuple(eps.shape)}")
        k = eps.shape[0]
        lm = labelmap if self.cfg.multimodal else None
        feat = self.encoder_pcd(partial)
        q_mu, q_std = self._posterior(feat, lm)
        z = torch.cat([q_mu.unsqueeze(0), q_mu + q_std * eps.to(q_mu.dtype)], dim=0).reshape((1 + k) * b, -1)
        feat_k = feat.repeat(1 + k, 1) + self.generator(z)
        lm_k = lm.repeat(1 + k, 1, 1) if lm is not None else None
        _, _, fine = self.decoder(feat_k, partial.repeat(1 + k, 1, 1), lm_k)
        return fine.reshape(1 + k, b, self.cfg.num_out, 3).transpose(0, 1)

    @torch.no_grad()
    def sample(self, partial: torch.Tensor, labelmap: torch.Tensor | None, k: int, *,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """k completions per input with the latent drawn from the posterior.

        ``generator`` is a CPU generator (the draws are made on the CPU and moved to the inputs' device, so
        the same seed gives the same draws on every device).

        Returns
        -------
        (B, k, num_out, 3) tensor, unit frame
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self._check(partial, labelmap)
        eps = torch.randn((k, partial.shape[0], self.cfg.latent), generator=generator).to(partial.device)
        return self.mean_and_samples(partial, labelmap, eps)[:, 1:]


def point_uncertainty(samples: torch.Tensor) -> torch.Tensor:
    """Per-point spread of ``CompletionNet.sample`` output about the samples' own mean.

    (B, K, N, 3) -> (B, N), same unit as the input: ``sqrt(sum over xyz of the variance over K)``. Point i of
    every sample must be the same network slot (``CompletionNet.index_correspondence``); the spread the node
    publishes is measured about the posterior-mean completion instead (``completion.uncertainty``).
    """
    return samples.var(dim=1, unbiased=False).sum(-1).sqrt()


class InferenceModule(nn.Module):
    """Export / engine wrapper: ``forward(partial[, labelmap]) -> fine (B, num_out, 3)``, posterior mean."""

    def __init__(self, net: CompletionNet) -> None:
        super().__init__()
        self.net = net.eval()
        self.multimodal = net.cfg.multimodal

    def forward(self, partial: torch.Tensor, labelmap: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(partial, labelmap if self.multimodal else None)["fine"]


def build_model(cfg: ModelConfig) -> CompletionNet:
    """Build a freshly initialised network for ``cfg``."""
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    return CompletionNet(cfg)
