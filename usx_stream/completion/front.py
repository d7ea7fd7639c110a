"""The one way into completion: per-vertebra points in millimetres in, completed points in millimetres out.

:func:`complete_levels` takes each vertebra's partial bone points and back-projected labelmap points in one
frame (the node's Reference), with the rotation to the vertebra's canonical axes, and

1. ``prepare``: resamples every cloud to the network's point counts in one batched furthest-point sampling
   and moves it to the unit frame (``completion.prepare.canonical_input``);
2. ``complete``: runs all vertebrae through the engine as one batch;
3. ``body_fit`` (optional, multimodal): fits each completed body to its X-ray silhouette
   (``completion.body_fit``);
4. ``uncertainty`` (``samples`` = K > 0): the same ``complete`` call decodes the posterior-mean latent and K
   draws in one batch of B x (1 + K) (``CompletionEngine.run_device_samples``) and each completed point gets
   its spread in mm (``completion.uncertainty``: RMS distance to the corresponding point of the draws);
   or (``error_head``) each completed point gets the expected distance to the true surface, in mm, from the
   engine's learned error head (``completion.error_head``), on the engine's device;

and maps the completed points back to the input frame. The node's surface update and
:meth:`CompletionEngine.complete <usx_stream.completion.engine.CompletionEngine.complete>` both call it, so a
library user and the node complete the same inputs to the same points. It needs numpy and torch only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ContextManager

import numpy as np

from usx_stream.completion import normalize as nz
from usx_stream.completion.body_fit import fit_body_to_silhouette
from usx_stream.completion.prepare import canonical_input

_LOG = logging.getLogger(__name__)

Timer = Callable[[str], ContextManager]


@dataclass(frozen=True)
class LevelPoints:
    """One vertebra's completion input, in millimetres.

    Attributes
    ----------
    level : str
        Its name (``"L1"`` .. ``"L5"`` in the node; any label for a library user).
    partial_mm : (N, 3) array_like
        Partial ultrasound bone points, mm, in the input frame (Reference in the node).
    labelmap_mm : (M, 3) array_like or None
        Back-projected X-ray labelmap points, mm, same frame (used by multimodal engines only).
    rotation : (3, 3) array_like or None
        Rows: the vertebra's canonical axes (x left-right, y posterior, z cranial) in the input frame, as
        ``completion.prepare.vertebra_rotation`` returns them; None: the input axes are the canonical ones.
    """

    level: str
    partial_mm: np.ndarray
    labelmap_mm: np.ndarray | None = None
    rotation: np.ndarray | None = None


@dataclass(frozen=True)
class PreparedLevel:
    """What the network sees of one vertebra, and the way back to millimetres.

    Attributes
    ----------
    level : str
    partial_unit : (num_partial, 3) float32 ndarray, unit frame
    labelmap_unit : (num_labelmap, 3) float32 ndarray or None, unit frame
    model_to_input : (4, 4) float64 ndarray, unit frame -> input frame (mm)
    """

    level: str
    partial_unit: np.ndarray
    labelmap_unit: np.ndarray | None
    model_to_input: np.ndarray

    def to_input_frame(self, points_unit: np.ndarray) -> np.ndarray:
        """(K, 3) unit-frame points -> (K, 3) float64, mm, in the input frame."""
        p = np.asarray(points_unit, dtype=np.float64).reshape(-1, 3)
        m = self.model_to_input
        return p @ m[:3, :3].T + m[:3, 3]


@dataclass
class LevelCompletion:
    """One vertebra's completion.

    Attributes
    ----------
    level : str
    points_mm : (num_out, 3) float64 ndarray, mm, input frame; (0, 3) when the vertebra had nothing to complete
    prepared : PreparedLevel or None
        The network's input (None when nothing was completed).
    spread_mm : (num_out,) float32 ndarray or None
        Per point of ``points_mm``: its completion uncertainty in mm, the latent spread
        (``completion.uncertainty``) or the error head's expected distance to the true surface
        (``completion.error_head``), measured on the network's output before the body fit (the fit moves and
        scales the body, not the uncertainty); None when neither was asked for.
    metadata : dict
        ``xray_body_shift_mm`` (cranial, mm), ``xray_body_scale`` (height) and ``xray_body_depth_scale`` when
        the body fit was applied;
        ``xray_body_fit`` (why not) when it was asked for and not applied; empty otherwise.
    """

    level: str
    points_mm: np.ndarray
    prepared: PreparedLevel | None = None
    spread_mm: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)


def _completable(item: LevelPoints, multimodal: bool) -> bool:
    if len(item.partial_mm) == 0:
        return False
    return not multimodal or (item.labelmap_mm is not None and len(item.labelmap_mm) > 0)


def prepare_levels(levels: Sequence[LevelPoints], *, num_partial: int, num_labelmap: int, multimodal: bool,
                   seed: int = 0) -> list[PreparedLevel | None]:
    """Step 1 of :func:`complete_levels`: every vertebra's unit-frame network input.

    Partial clouds, then labelmap clouds, are resampled in one batched furthest-point sampling each (seeded
    thinning of very large clouds, ``normalize.resample_batch``) in the input frame, then rotated and
    normalised. A vertebra without partial points (or, for ``multimodal``, without labelmap points) gives None.

    Returns
    -------
    list of PreparedLevel or None, in the order of ``levels``
    """
    todo = [i for i, item in enumerate(levels) if _completable(item, multimodal)]
    out: list[PreparedLevel | None] = [None] * len(levels)
    if not todo:
        return out
    partial_rs = nz.resample_batch([levels[i].partial_mm for i in todo], num_partial, seed=seed)
    lm_rs = nz.resample_batch([levels[i].labelmap_mm for i in todo], num_labelmap, seed=seed) if multimodal else None
    for k, i in enumerate(todo):
        item = levels[i]
        rot = np.eye(3) if item.rotation is None else np.asarray(item.rotation, dtype=np.float64)
        lm = item.labelmap_mm if multimodal else None
        resampled = (partial_rs[k].astype(np.float64), None if lm_rs is None else lm_rs[k].astype(np.float64))
        unit_p, unit_lm, m = canonical_input(item.partial_mm, lm, rotation=rot, num_partial=num_partial,
                                             num_labelmap=num_labelmap, seed=seed, resampled=resampled,
                                             name=item.level)
        out[i] = PreparedLevel(item.level, unit_p, unit_lm, m)
    return out


def complete_levels(engine, levels: Sequence[LevelPoints], *, fit_body: bool = False, seed: int = 0,
                    timer: Timer | None = None, samples: int = 0, correspondence: str = "auto",
                    error_head: bool = False) -> list[LevelCompletion]:
    """Complete vertebrae given in millimetres, in one batch.

    Parameters
    ----------
    engine : CompletionEngine
        Anything with ``cfg`` (``multimodal``, ``num_partial``, ``num_labelmap``), ``device`` and
        ``run_device(partial, labelmap)``.
    levels : sequence of LevelPoints
        Points in mm in one frame (the node's Reference); labelmaps are ignored by a US-only engine.
    fit_body : bool
        Fit each completed body to its X-ray silhouette (height and depth; multimodal engines only).
    seed : int
        Seed of the thinning of very large clouds before furthest-point sampling.
    timer : callable, optional
        ``timer(step)`` gives a context manager timing ``step`` (``"prepare"``, ``"complete"``,
        ``"body_fit"``, ``"uncertainty"``), e.g. ``Telemetry.time``.
    samples : int
        K latent draws decoded with the mean for the per-point spread (0: none, and the points are exactly
        those of a call without draws). The draws are seeded by ``seed``: the same every call.
    correspondence : {"auto", "index", "nearest"}
        How a draw's point corresponds to a mean point (``completion.uncertainty``).
    error_head : bool
        With ``samples`` = 0: each point's uncertainty is the expected distance to the true surface from the
        engine's ``error_head`` (:mod:`completion.error_head`; none when the engine has no head). The
        completed points are exactly those of a call without it.

    Returns
    -------
    list of LevelCompletion, in the order of ``levels``; ``points_mm`` (num_out, 3) float64 in the input frame,
    (0, 3) for a vertebra without partial points (or, multimodal, without labelmap points); ``spread_mm``
    (num_out,) float32 mm when ``samples`` > 0.
    """
    if not isinstance(samples, (int, np.integer)) or samples < 0:
        raise ValueError(f"complete_levels: samples must be an integer >= 0, got {samples!r}")
    if samples and error_head:
        raise ValueError("complete_levels: give samples (latent spread) or error_head, not both")
    head = getattr(engine, "error_head", None) if error_head else None

    multimodal = bool(engine.cfg.multimodal)
    if fit_body and not multimodal:
        raise ValueError("complete_levels: fit_body needs a multimodal engine (the fit uses the labelmap)")
    timer = timer or (lambda _step: contextlib.nullcontext())
    results = [LevelCompletion(item.level, np.zeros((0, 3))) for item in levels]
    with timer("prepare"):
        prepared = prepare_levels(levels, num_partial=engine.cfg.num_partial, num_labelmap=engine.cfg.num_labelmap,
                                  multimodal=multimodal, seed=seed)
    done = [(i, p) for i, p in enumerate(prepared) if p is not None]
    if not done:
        return results
    names = ", ".join(p.level for _, p in done)
    with timer("complete"):
        try:
            batch = _run_network(engine, done, multimodal=multimodal, samples=int(samples), seed=seed)
        except ValueError as e:   # e.g. NaN reaching the network's neighbour search: say what was being done
            raise ValueError(f"completion of {names}: {e}") from e
    bad = [p.level for k, (_, p) in enumerate(done) if not np.isfinite(batch.completed[k]).all()]
    if bad:   # else meshing fails later, naming no level or cause
        raise ValueError(f"completion of {', '.join(bad)}: the network returned non-finite points (damaged weights?)")
    if head is not None or samples:
        with timer("uncertainty"):
            spread_unit = _uncertainty(engine, batch, head, correspondence)
        for k, (i, p) in enumerate(done):
            results[i].spread_mm = (spread_unit[k] * _mm_per_unit(p)).astype(np.float32)
    completed = batch.completed
    if fit_body:
        with timer("body_fit"):
            _fit_bodies(done, completed, results)
    for k, (i, p) in enumerate(done):
        results[i].points_mm = p.to_input_frame(completed[k])
        results[i].prepared = p
    return results


@dataclass
class _NetworkBatch:
    """One batch through the network: its inputs on the engine's device, and what came out."""

    partial: object                    # (B, num_partial, 3) tensor
    labelmap: object                   # (B, num_labelmap, 3) tensor or None (US-only)
    completed: list[np.ndarray]        # per vertebra (num_out, 3) float32, unit frame: the posterior mean
    outputs: object                    # (B, num_out, 3) tensor, or (B, 1 + K, num_out, 3) with latent draws


def _run_network(engine, done: list[tuple[int, PreparedLevel]], *, multimodal: bool, samples: int,
                 seed: int) -> _NetworkBatch:
    import torch

    from usx_stream.completion import uncertainty as unc

    dev = engine.device
    partial = torch.from_numpy(np.ascontiguousarray(np.stack([p.partial_unit for _, p in done]))).to(dev)
    labelmap = (torch.from_numpy(np.ascontiguousarray(np.stack([p.labelmap_unit for _, p in done]))).to(dev)
                if multimodal else None)
    with torch.inference_mode():
        if samples:
            eps = unc.latent_draws(samples, len(done), engine.cfg.latent, seed=seed)
            out = engine.run_device_samples(partial, labelmap, eps)
            completed = list(out[:, 0].cpu().numpy())
        else:
            out = engine.run_device(partial, labelmap).float()
            completed = list(out.cpu().numpy())
    return _NetworkBatch(partial, labelmap, completed, out)


def _uncertainty(engine, batch: _NetworkBatch, head, correspondence: str) -> np.ndarray:
    """Per-point uncertainty in unit-frame units, (B, num_out): the error head's expected distance to the true
    surface (``head`` given), else the spread of the latent draws about the mean (``batch.outputs`` has draws)."""
    import torch

    from usx_stream.completion import ops, uncertainty as unc

    if head is not None:
        lm = None if batch.labelmap is None else batch.labelmap.float()
        with torch.inference_mode(), ops.tree_knn():
            return head(batch.outputs, batch.partial.float(), lm).cpu().numpy()
    out = batch.outputs
    how = unc.resolve_correspondence(correspondence, bool(getattr(engine.model, "index_correspondence", False)))
    return unc.point_spread(out[:, 0], out[:, 1:], correspondence=how).cpu().numpy()


def _fit_bodies(done: list[tuple[int, PreparedLevel]], completed: list[np.ndarray],
                results: list[LevelCompletion]) -> None:
    """Fit each completed body (``completed[k]``, unit frame, replaced) to the X-ray silhouette of its
    labelmap; the fit, or why it was not applied, goes into the metadata of ``results[i]``."""
    for k, (i, p) in enumerate(done):
        fitted, fit = fit_body_to_silhouette(completed[k], p.labelmap_unit)
        completed[k] = fitted.astype(np.float32)
        results[i].metadata.update(
            {"xray_body_shift_mm": round(fit.shift * nz.SCALE_MM, 2), "xray_body_scale": round(fit.scale, 3),
             "xray_body_depth_scale": round(fit.depth_scale, 3)}
            if fit.applied else {"xray_body_fit": f"not applied: {fit.reason}"})
        if not fit.applied:   # every update, twice a second: the metadata is where it shows
            _LOG.debug("body fit of %s not applied: %s", p.level, fit.reason)


def _mm_per_unit(prepared: PreparedLevel) -> float:
    return float(np.cbrt(abs(np.linalg.det(prepared.model_to_input[:3, :3]))))
