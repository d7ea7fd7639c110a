"""Fitting and checking the error head (:mod:`usx_stream.completion.error_head`) of frozen completion weights.

``completion_errors`` runs the frozen network on a paired-data file as the node does (posterior mean, then the
X-ray body fit for multimodal weights) and measures each completed point's distance to the ground-truth points;
``fit_error_head`` trains a head on those (Laplace negative log-likelihood of the distance, per point), keeps
the epoch whose validation Spearman rho is highest and scales it to the validation pairs' mean error
(``calibrate``: give validation pairs with dense truth); ``rank_report`` says whether a per-point uncertainty ranks
the per-point error: Spearman rho over all points with its p-value (points of one vertebra are not independent:
the p-value is optimistic), the median per-vertebra rho and the share of vertebrae where it is positive, the
rho between per-vertebra means, and the error by uncertainty decile.

The distance to the nearest of G ground-truth points has a floor of about half their spacing (~0.5 mm at
G = 2048 on a lumbar vertebra): training tolerates it; figures to report need dense truth
(``usx-stream dataset --complete-points 16384``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..completion import ops
from ..completion.error_head import ErrorHead, point_features
from .data import PairedArrays

log = logging.getLogger(__name__)


@dataclass
class CompletionErrors:
    """Per sample of a file: ``features`` (N, P, F) float32 tensor, ``error`` (N, P) float32 ndarray (unit
    frame), ``points`` (N, P, 3) the published (body-fitted) completions, ``mm_per_unit`` of the file."""

    features: torch.Tensor
    error: np.ndarray
    points: np.ndarray
    levels: list[str]
    mm_per_unit: float


def completion_errors(model, data: PairedArrays, *, batch: int = 8) -> CompletionErrors:
    """Complete every sample of ``data`` with the frozen ``model`` and measure each point's error."""
    from scipy.spatial import cKDTree

    from ..completion.body_fit import fit_body_to_silhouette

    from .network_io import frame_shift, model_inputs

    multimodal = bool(model.cfg.multimodal)
    partial_all, labelmap_all = model_inputs(data, model.cfg, "completion_errors")
    shift = frame_shift(data, model.cfg)          # the model's frame -> the file's (US-only: partial-centred)
    feats, errors, published = [], [], []
    model.eval()
    for start in range(0, len(data), batch):
        partial = partial_all[start:start + batch]
        labelmap = None if labelmap_all is None else labelmap_all[start:start + batch]
        with torch.inference_mode(), ops.tree_knn():
            fine = model(partial, labelmap)["fine"]
            feats.append(point_features(fine, partial, labelmap).clone())
        for b, points in enumerate(fine.numpy()):
            i = start + b
            points = points + shift[i]
            if multimodal:
                points, _ = fit_body_to_silhouette(points, labelmap[b].numpy())
            published.append(np.asarray(points, np.float32))
            errors.append(cKDTree(np.asarray(data.complete[i], np.float64)).query(published[-1])[0])
    return CompletionErrors(torch.cat(feats), np.asarray(errors, np.float32), np.stack(published),
                            data.levels(), float(data.mm_per_unit))


def laplace_nll(log_scale: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of ``error`` >= 0 under a Laplace(0, exp(log_scale)) (constant dropped)."""
    return (log_scale + error * torch.exp(-log_scale)).mean()


def fit_error_head(train: CompletionErrors, val: CompletionErrors, *, multimodal: bool, epochs: int = 30,
                   batch: int = 16, lr: float = 1e-3, seed: int = 0, hidden: int = 64,
                   average_from: int | None = None) -> tuple[ErrorHead, list[dict]]:
    """Train a head on ``train`` and calibrate it on ``val``. Returns the head (eval mode) and one history row per
    epoch (``loss``, ``val_rho`` of that epoch's weights).

    Which weights are kept: by default the epoch with the highest Spearman rho on ``val``; with ``average_from``
    E, the average of the weights after each epoch from E on (``torch.optim.swa_utils.AveragedModel``). The
    per-epoch validation rho of this small head scatters by ~0.02-0.03 from one epoch to the next; the average is
    chosen by no validation figure. For the stage-11 weights it validated no better than the picked epoch
    (``MODEL_HISTORY.md``), so the default stays."""
    from torch.optim.swa_utils import AveragedModel

    if epochs < 1 or batch < 1 or lr <= 0:
        raise ValueError(f"fit_error_head: epochs, batch and lr must be positive, got {epochs}, {batch}, {lr}")
    if average_from is not None and not 0 <= average_from < epochs:
        raise ValueError(f"fit_error_head: average_from must be in [0, epochs = {epochs}), got {average_from}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = ErrorHead(multimodal=multimodal, hidden=hidden)
    flat = train.features.reshape(-1, train.features.shape[-1])
    head.feature_mean.copy_(flat.mean(0))
    head.feature_std.copy_(flat.std(0).clamp_min(1e-6))
    target = torch.from_numpy(train.error)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=1e-4)
    best, history = (-np.inf, None), []
    averaged = AveragedModel(head) if average_from is not None else None
    for epoch in range(epochs):
        head.train()
        order = torch.randperm(len(target), generator=gen)
        losses = []
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            loss = laplace_nll(head.log_scale(train.features[idx]), target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        head.eval()
        if averaged is not None and epoch >= average_from:
            averaged.update_parameters(head)
        rho = _validation_rho(head, val)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_rho": rho})
        log.info("error head epoch %d: loss %.4f, validation rho %.3f", epoch, history[-1]["loss"], rho)
        if rho > best[0]:
            best = (rho, {k: v.clone() for k, v in head.state_dict().items()})
    head.load_state_dict(averaged.module.state_dict() if averaged is not None else best[1])
    head.eval()
    if averaged is not None:
        log.info("error head: weights of epochs %d-%d averaged, validation rho %.3f", average_from, epochs - 1,
                 _validation_rho(head, val))
    calibrate(head, val)
    return head, history


def _validation_rho(head: ErrorHead, val: CompletionErrors) -> float:
    from scipy.stats import spearmanr

    with torch.no_grad():
        pred = head.log_scale(val.features).numpy()
    return float(spearmanr(pred.ravel(), val.error.ravel())[0])


def calibrate(head: ErrorHead, val: CompletionErrors) -> float:
    """Scale ``head`` so its mean predicted error equals the mean error on ``val``; returns the factor.

    The ranking is what training learns; the level in mm is set here, on held-out pairs whose ground truth is
    dense (the training pairs' 2048 truth points add a spacing floor to every error)."""
    with torch.no_grad():
        factor = float(val.error.mean() / predict(head, val).mean())
        head.mlp[-1].bias += float(np.log(factor))
    log.info("error head calibrated on validation: x%.3f", factor)
    return factor


def predict(head: ErrorHead, errors: CompletionErrors) -> np.ndarray:
    """(N, P) expected error of every point, unit frame."""
    with torch.no_grad():
        return head.log_scale(errors.features).exp().numpy()


def rank_report(uncertainty: np.ndarray, error: np.ndarray, levels: list[str] | None = None) -> dict:
    """How well per-point ``uncertainty`` (N, P) ranks per-point ``error`` (N, P) (same units, e.g. mm)."""
    from scipy.stats import spearmanr

    u, e = np.asarray(uncertainty, np.float64), np.asarray(error, np.float64)
    if u.shape != e.shape or u.ndim != 2 or len(u) < 3:
        raise ValueError(f"rank_report: uncertainty and error must be the same (N >= 3, P) shape, got "
                         f"{u.shape} and {e.shape}")
    rho, p = spearmanr(u.ravel(), e.ravel())
    per = np.array([spearmanr(a, b)[0] for a, b in zip(u, e)])
    rho_v, p_v = spearmanr(u.mean(1), e.mean(1))
    edges = np.quantile(u, np.linspace(0.0, 1.0, 11))
    bins = np.clip(np.searchsorted(edges, u.ravel(), side="right") - 1, 0, 9)
    deciles = [{"decile": d + 1, "uncertainty": [float(edges[d]), float(edges[d + 1])],
                "error_mean": float(e.ravel()[bins == d].mean()), "error_median": float(np.median(e.ravel()[bins == d])),
                "points": int((bins == d).sum())} for d in range(10)]
    out = {"points": int(u.size), "vertebrae": int(len(u)), "spearman_rho": float(rho), "p_value": float(p),
           "per_vertebra_rho_median": float(np.nanmedian(per)), "per_vertebra_rho_positive": float(np.mean(per > 0)),
           "vertebra_mean_rho": float(rho_v), "vertebra_mean_p": float(p_v),
           "uncertainty_mean": float(u.mean()), "error_mean": float(e.mean()), "deciles": deciles}
    if levels is not None:
        out["per_level"] = {lv: {"spearman_rho": float(spearmanr(u[m].ravel(), e[m].ravel())[0]),
                                 "uncertainty_mean": float(u[m].mean()), "error_mean": float(e[m].mean())}
                            for lv in sorted(set(levels)) for m in [np.array([x == lv for x in levels])]}
    return out


def latent_spread(model, data: PairedArrays, *, k: int = 8, seed: int = 0, batch: int = 8) -> np.ndarray:
    """(N, P) spread of K latent draws about the mean completion (``completion.uncertainty``, the node's
    ``completion.uncertainty = "latent"``), unit frame, per point of the completions of ``completion_errors``:
    the alternative the error head is compared with."""
    from ..completion import uncertainty as unc
    from .network_io import model_inputs

    partial_all, labelmap_all = model_inputs(data, model.cfg, "latent_spread")
    how = unc.resolve_correspondence("auto", bool(model.index_correspondence))
    out = []
    for start in range(0, len(data), batch):
        partial = partial_all[start:start + batch]
        labelmap = None if labelmap_all is None else labelmap_all[start:start + batch]
        eps = unc.latent_draws(k, len(partial), model.cfg.latent, seed=seed + start)
        with torch.inference_mode(), ops.tree_knn():
            draws = model.mean_and_samples(partial, labelmap, eps)
            out.append(unc.point_spread(draws[:, 0], draws[:, 1:], correspondence=how).numpy())
    return np.concatenate(out).astype(np.float32)
