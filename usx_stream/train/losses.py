"""The training loss of DESIGN §4 (VRCNet / US-X Complete).

``loss = 10·CD_p(coarse_raw) + 0.5·CD_p(coarse_high) + 1·CD_p(coarse) + α·CD_p(fine) + 20·(KL_rec + KL_gen)``

CD_p is the per-sample ``(mean √d1 + mean √d2) / 2`` of :func:`usx_stream.metrics.chamfer_cdp` against the
(doubled) ground truth the network returns under ``"gt"``; α follows the schedule 0.01 → 0.1 → 0.5 → 1 at
epochs 5 / 15 / 30. When two outputs are the same tensor (in the small configuration ``coarse_high``,
``coarse`` and ``fine`` are one tensor) their weights are added and the distance is computed once.
"""

from __future__ import annotations

import torch

from ..metrics import chamfer_cdp

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


def completion_loss(out: dict[str, torch.Tensor], *, alpha: float, chunk: int = 1024
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
    kl = out["kl_rec"].mean() + out["kl_gen"].mean()
    loss = loss + KL_WEIGHT * kl
    parts["kl"] = float(kl.detach())
    parts["total"] = float(loss.detach())
    return loss, parts
