"""The network's side of paired data, for training, evaluation and the error head.

:func:`model_inputs` cuts a file's clouds to a model's point counts in the model's input frame
(:func:`frame_shift`); :func:`predict` completes them in batches and :func:`validate` scores the
completions (CD_p, CD_t, F1) against the ground truth.
"""

from __future__ import annotations

import numpy as np
import torch

from ..metrics import calc_cd
from .data import PairedArrays


def frame_shift(arrays: PairedArrays, model_cfg) -> np.ndarray:
    """(N, 3) translation from the file's unit frame to the model's input frame, unit scale.

    The unit frame is centred on the bounding box of the partial *and* labelmap points. A US-only model
    never sees the labelmap, at inference either (``completion.prepare`` centres it on the partial points
    alone), so its frame is centred on the partial points: ``model = file - shift``.
    """
    if model_cfg.multimodal or arrays.labelmap.shape[1] == 0:
        return np.zeros((len(arrays), 3), dtype=np.float32)
    p = arrays.partial
    return ((p.min(axis=1) + p.max(axis=1)) / 2).astype(np.float32)


def model_inputs(arrays: PairedArrays, model_cfg, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Partial (and labelmap) tensors cut to the model's point counts (prefixes of furthest-point orders),
    in the model's input frame (:func:`frame_shift`)."""
    if arrays.partial.shape[1] < model_cfg.num_partial:
        raise ValueError(f"{name}: partial clouds have {arrays.partial.shape[1]} points, the model needs "
                         f"{model_cfg.num_partial}")
    partial = torch.from_numpy(arrays.partial[:, :model_cfg.num_partial])
    if not model_cfg.multimodal:
        return partial - torch.from_numpy(frame_shift(arrays, model_cfg))[:, None], None
    if arrays.labelmap.shape[1] < model_cfg.num_labelmap:
        raise ValueError(f"{name}: labelmaps have {arrays.labelmap.shape[1]} points, the model needs "
                         f"{model_cfg.num_labelmap}")
    return partial, torch.from_numpy(arrays.labelmap[:, :model_cfg.num_labelmap])


@torch.no_grad()
def predict(net, partial: torch.Tensor, labelmap: torch.Tensor | None, *, batch_size: int = 16) -> torch.Tensor:
    """Deterministic completions (``fine``) of ``partial`` (N, P, 3) [+ ``labelmap``] in batches."""
    was_training = net.training
    net.eval()
    out = []
    for start in range(0, len(partial), batch_size):
        lm = None if labelmap is None else labelmap[start:start + batch_size]
        out.append(net(partial[start:start + batch_size], lm)["fine"])
    net.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0, 3)


def validate(net, partial, labelmap, complete: torch.Tensor, *, chunk: int = 1024) -> dict[str, float]:
    """Mean ``cd_p``, ``cd_t`` and ``f1`` of the network's completions against ``complete``."""
    fine = predict(net, partial, labelmap)
    res = calc_cd(fine, complete, chunk=chunk)
    return {k: float(v.mean()) for k, v in res.items()}
