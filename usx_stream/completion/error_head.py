"""Per-point completion uncertainty from a learned error head: how far each completed point is expected to lie
from the true surface.

Why not the VAE's own spread (:mod:`completion.uncertainty`): the shipped network's latent posterior collapsed in
training (KL ~1e-4), and the spread of K latent draws does not rank the error (held-out real spines: Spearman
rho -0.003, flat by decile; ``usx-stream error-head check --latent 8``). The error head is a small per-point network trained *after* the completion network, with that network
frozen, on its own completions of training pairs: it sees only what the node has at run time and predicts the
Laplace scale ``b`` of each point's distance to the true surface, so ``b`` is the expected distance (for a
Laplace variable, E|e| = b). The completion itself is untouched: the same points are published with or without
the head.

Features of completed point i (all in the vertebra's unit frame, :mod:`completion.normalize`; ``FEATURES_*``):
its position (where on the vertebra: process tips and the anterior body are guessed more often than the laminae
the probe sees), its distance from the completion's centroid, and the log distance to the nearest observed
ultrasound point and (multimodal) to the nearest X-ray labelmap point. Descriptors of the completed neighbours
(covariance shape, their distance to the evidence) were tried and left out: on validation they changed rho by
less than its spread between runs (0.27-0.30) and their 16-neighbour search cost ~40 ms per update on a 2-core
CPU, where these features cost ~6 ms.

Nothing here depends on the network's internals, so the head runs after any backend (eager, compiled, TensorRT)
on the same device. A head belongs to one set of completion weights: the file records their state-dict hash and
:func:`load_error_head` refuses another network's.

API
---
``point_features(points, partial, labelmap=None)`` -> (B, N, F) tensor.
``ErrorHead(multimodal)``: ``head(points, partial, labelmap)`` -> (B, N) expected error, unit frame.
``save_error_head(path, head, completion_hash, extra)``, ``load_error_head(path, completion_hash=None)``,
``packaged_error_head(variant)`` -> path of the head shipped with the default weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import ops

_EPS = 1e-3  # unit frame (0.05 mm at 50 mm per unit): keeps log distance finite on an observed point
FEATURES_MULTIMODAL = ("x", "y", "z", "log_dist_us", "log_dist_xray", "radius")
FEATURES_US_ONLY = tuple(f for f in FEATURES_MULTIMODAL if f != "log_dist_xray")
FORMAT = "usx-stream error head 1"


def _nearest_distance(points: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return ops.knn(points, ref, 1)[0][..., 0].clamp_min(0).sqrt()


def point_features(points: torch.Tensor, partial: torch.Tensor, labelmap: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Per-point features of completions ``points`` (B, N, 3) given the network inputs ``partial`` (B, P, 3) and
    (multimodal) ``labelmap`` (B, M, 3), unit frame; (B, N, 6) with a labelmap, (B, N, 5) without, in the order
    of ``FEATURES_MULTIMODAL`` / ``FEATURES_US_ONLY``. Device-agnostic (a k-d tree on the CPU inside
    ``ops.tree_knn``, distance blocks elsewhere)."""
    if points.dim() != 3 or points.shape[-1] != 3 or points.shape[1] < 1:
        raise ValueError(f"points must be (B, N >= 1, 3), got {tuple(points.shape)}")
    points = points.float()
    parts = [points, torch.log(_nearest_distance(points, partial.float()) + _EPS)[..., None]]
    if labelmap is not None:
        parts.append(torch.log(_nearest_distance(points, labelmap.float()) + _EPS)[..., None])
    parts.append((points - points.mean(dim=1, keepdim=True)).norm(dim=-1, keepdim=True))
    return torch.cat(parts, dim=-1)


class ErrorHead(nn.Module):
    """Per-point MLP on :func:`point_features` -> log Laplace scale; ``forward`` returns the scale (the expected
    distance to the true surface), unit frame. ``feature_mean`` / ``feature_std`` standardise the features
    (set from the training set by ``train.error_head``)."""

    def __init__(self, multimodal: bool = True, hidden: int = 64) -> None:
        super().__init__()
        self.multimodal = bool(multimodal)
        self.hidden = int(hidden)
        n = len(FEATURES_MULTIMODAL if self.multimodal else FEATURES_US_ONLY)
        self.register_buffer("feature_mean", torch.zeros(n))
        self.register_buffer("feature_std", torch.ones(n))
        self.mlp = nn.Sequential(nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    @property
    def feature_names(self) -> tuple[str, ...]:
        return FEATURES_MULTIMODAL if self.multimodal else FEATURES_US_ONLY

    def log_scale(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N, F) features -> (B, N) log expected error (the training loss works on this)."""
        return self.mlp((features - self.feature_mean) / self.feature_std)[..., 0]

    def forward(self, points: torch.Tensor, partial: torch.Tensor, labelmap: torch.Tensor | None = None
                ) -> torch.Tensor:
        if self.multimodal and labelmap is None:
            raise ValueError("ErrorHead: a multimodal head needs the labelmap points")
        feats = point_features(points, partial, labelmap if self.multimodal else None)
        return self.log_scale(feats.to(self.feature_mean.dtype)).exp()


def save_error_head(path: str | Path, head: ErrorHead, completion_hash: str, extra: dict | None = None) -> Path:
    """Write ``head`` for the completion weights whose ``checkpoint.state_dict_hash`` is ``completion_hash``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "multimodal": head.multimodal, "hidden": head.hidden,
                "features": list(head.feature_names), "completion_hash": str(completion_hash),
                "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
                "extra": dict(extra or {})}, path)
    return path


def load_error_head(path: str | Path, *, completion_hash: str | None = None) -> tuple[ErrorHead, dict]:
    """Load a head; with ``completion_hash``, refuse one trained for other completion weights. Returns the head
    (eval mode, CPU) and the file's ``extra`` (training provenance and held-out figures)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"error head not found: {path}")
    from ..errors import InputError
    from .checkpoint import read_torch_file

    data = read_torch_file(path, "error head")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{path}: not an error head file (format {data.get('format') if isinstance(data, dict) else None!r}, "
                         f"expected {FORMAT!r})")
    if completion_hash is not None and data["completion_hash"] != completion_hash:
        raise ValueError(f"{path}: error head trained for completion weights {data['completion_hash'][:12]}..., "
                         f"these are {completion_hash[:12]}... (train one with `usx-stream error-head fit`)")
    head = ErrorHead(multimodal=bool(data["multimodal"]), hidden=int(data["hidden"]))
    if tuple(data["features"]) != head.feature_names:
        raise ValueError(f"{path}: features {data['features']} differ from this version's {list(head.feature_names)}")
    head.load_state_dict(data["state_dict"])
    return head.eval(), dict(data.get("extra") or {})


def packaged_error_head(variant: str = "multimodal") -> Path:
    """Path of the error head shipped with the default ``variant`` weights."""
    from .checkpoint import WEIGHTS_DIR, default_path

    default_path(variant)  # validates the variant
    return WEIGHTS_DIR / f"{variant}_error_head.pt"
