"""The training loss of DESIGN §4 (VRCNet / US-X Complete).

``loss = 10·CD_p(coarse_raw) + 0.5·CD_p(coarse_high) + 1·CD_p(coarse) + α·CD_p(fine) + 20·(KL_rec + KL_gen)``
``       [+ β·CD_p,body(fine)]``

CD_p is the per-sample ``(mean √d1 + mean √d2) / 2`` of :func:`usx_stream.metrics.chamfer_cdp` against the
(doubled) ground truth the network returns under ``"gt"``; α follows the schedule 0.01 → 0.1 → 0.5 → 1 at
epochs 5 / 15 / 30. When two outputs are the same tensor (in the small configuration ``coarse_high``,
``coarse`` and ``fine`` are one tensor) their weights are added and the distance is computed once.

The optional last term (β = ``body_weight``, 0 = the paper's loss) is the chamfer distance of the vertebral
body alone, split and matched as the body metrics split and match it (:func:`usx_stream.metrics.region_masks`:
points anterior of the truth centroid's coronal plane, each matched within its own region): the body is what
the X-ray adds and what the figures score. Stage 13 (``MODEL_HISTORY.md``) trained with β = 1 and did not ship.
"""

from __future__ import annotations

import torch

from ..metrics import POSTERIOR_AXIS, chamfer_cdp, check_batched_pair, nearest_indices

CD_WEIGHTS = {"coarse_raw": 10.0, "coarse_high": 0.5, "coarse": 1.0}
KL_WEIGHT = 20.0
ALPHA_SCHEDULE = ((0, 0.01), (5, 0.1), (15, 0.5), (30, 1.0))
"""(first epoch, alpha) pairs: alpha of the ``fine`` term from that epoch on."""


def alpha_for_epoch(epoch: int, schedule=ALPHA_SCHEDULE) -> float:
    """Weight α of the fine-output term at ``epoch`` (0-based)."""
    if epoch < 0:
        raise ValueError(f"epoch: must be >= 0, got {epoch}")
    alpha = schedule[0][1]
    for start, value in schedule:
        if epoch >= start:
            alpha = value
    return float(alpha)


def completion_loss(out: dict[str, torch.Tensor], *, alpha: float, chunk: int = 1024, body_weight: float = 0.0
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts for one training forward pass.

    Parameters
    ----------
    out : dict
        Training output of the network: ``coarse_raw``, ``coarse_high``, ``coarse``, ``fine``
        ((2B, n, 3) each), ``gt`` ((2B, G, 3)), ``kl_rec`` and ``kl_gen`` ((B, latent), element-wise).
    alpha : float, keyword-only
        Weight of the ``fine`` term.
    chunk : int, keyword-only
        Row chunk of the chamfer distance matrices (memory).
    body_weight : float, keyword-only
        Weight β of the body-only chamfer term of the ``fine`` output (0 = none, the term is not computed).

    Returns
    -------
    loss : scalar tensor
    parts : dict[str, float]
        Mean CD_p per output key, ``kl`` and ``total`` (detached numbers, for logs).
    """
    missing = [k for k in (*CD_WEIGHTS, "fine", "gt", "kl_rec", "kl_gen") if k not in out]
    if missing:
        raise ValueError(f"network output: missing keys {missing}")
    weights = {**CD_WEIGHTS, "fine": float(alpha)}
    gt = out["gt"]
    groups: dict[int, tuple[torch.Tensor, float, list[str]]] = {}
    for key, w in weights.items():
        t = out[key]
        tensor, total, keys = groups.get(id(t), (t, 0.0, []))
        groups[id(t)] = (tensor, total + w, keys + [key])
    loss = gt.new_zeros(())
    parts: dict[str, float] = {}
    for tensor, w, keys in groups.values():
        cd = chamfer_cdp(tensor, gt, chunk=chunk).mean()
        loss = loss + w * cd
        for k in keys:
            parts[f"cd_{k}"] = float(cd.detach())
    if body_weight > 0:
        cd_body = body_chamfer_cdp(out["fine"], gt, chunk=chunk).mean()
        loss = loss + float(body_weight) * cd_body
        parts["cd_fine_body"] = float(cd_body.detach())
    kl = out["kl_rec"].mean() + out["kl_gen"].mean()
    loss = loss + KL_WEIGHT * kl
    parts["kl"] = float(kl.detach())
    parts["total"] = float(loss.detach())
    return loss, parts


def body_chamfer_cdp(pred: torch.Tensor, gt: torch.Tensor, *, axis: int = POSTERIOR_AXIS, chunk: int = 1024
                     ) -> torch.Tensor:
    """Per-sample CD_p of the vertebral body: (B,) tensor, differentiable.

    Both clouds are split at the coronal plane through the truth's centroid (``axis`` posterior; the body is
    at or anterior of it, as :func:`usx_stream.metrics.region_masks` splits them), and each body point is
    matched to the nearest body point of the other cloud, so the value is the body ``cd_p`` of
    :func:`usx_stream.metrics.evaluate_completion`. Points behind the plane get no gradient. A sample whose
    body is empty in either cloud contributes 0.
    """
    check_batched_pair(pred, gt, chunk)
    plane = gt[..., axis].mean(dim=1, keepdim=True).detach()           # (B, 1)
    p_body = pred[..., axis].detach() <= plane                          # (B, N)
    g_body = gt[..., axis].detach() <= plane                            # (B, M)
    with torch.no_grad():
        idx1, idx2 = nearest_indices(pred.detach(), gt.detach(), chunk, p_body, g_body)
    nn_of_pred = torch.gather(gt, 1, idx1.unsqueeze(-1).expand(-1, -1, 3))
    nn_of_gt = torch.gather(pred, 1, idx2.unsqueeze(-1).expand(-1, -1, 3))
    d1 = torch.sqrt(((pred - nn_of_pred) ** 2).sum(-1) + 1e-12)
    d2 = torch.sqrt(((gt - nn_of_gt) ** 2).sum(-1) + 1e-12)
    n1, n2 = p_body.sum(1), g_body.sum(1)
    m1 = (d1 * p_body).sum(1) / n1.clamp(min=1)
    m2 = (d2 * g_body).sum(1) / n2.clamp(min=1)
    return torch.where((n1 > 0) & (n2 > 0), (m1 + m2) / 2.0, torch.zeros_like(m1))
