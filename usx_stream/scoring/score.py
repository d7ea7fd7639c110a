"""One entry point: score a node recording against a truth, registering the truth first.

``score_recording`` reads the recording's frames twice at most (once for their poses and beam
direction, once more to recompound them for ``--register auto``), never holding them all in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import register as reg
from .recompound import bone_points_from_frames
from .recording import frame_poses, last_surfaces, mean_beam, recorded_frames
from .report import score_levels, summary
from .truth import load_truth

log = logging.getLogger(__name__)

__all__ = ["ScoreResult", "score_recording", "parse_register"]

FAR_APART_MM = 15.0
"""With ``--register none``, a median whole-vertebra ASSD above this means the truth is not in Reference:
a completion that failed is a few mm off, a truth in another frame (a CT's scanner frame) tens to hundreds."""


@dataclass
class ScoreResult:
    """What :func:`score_recording` found.

    Attributes
    ----------
    report : dict
        JSON-ready: ``levels``, ``summary``, ``registration``, ``truth``, ``recording``, ``warnings`` (lines
        saying the figures cannot mean what they seem, e.g. a truth in another frame; usually empty).
    clouds : dict
        Per level ``(pred (S, 3), truth (S, 3), pred_to_truth_mm (S,))`` in Reference, for the picture.
    posterior_ref : (3,) ndarray
        Unit direction towards the probe in Reference.
    """

    report: dict
    clouds: dict
    posterior_ref: np.ndarray


def parse_register(spec: str) -> tuple[str, Path | None]:
    """``"none"``, ``"auto"`` or ``"fiducials:PAIRS.csv"`` as ``(method, csv path or None)``."""
    if spec in ("none", "auto"):
        return spec, None
    method, sep, path = spec.partition(":")
    if method == "fiducials" and sep and path:
        return "fiducials", Path(path)
    raise InputError(f"--register: expected none, auto or fiducials:PAIRS.csv, got {spec!r}")


def score_recording(recording: str | Path, truth_path: str | Path, *, labels: str = "auto",
                    register: str = "none", launch=None, calibration=None,
                    min_inlier_fraction: float = reg.MIN_INLIER_FRACTION,
                    max_rms_mm: float = reg.MAX_RMS_MM,
                    max_fiducial_rms_mm: float = reg.MAX_FIDUCIAL_RMS_MM) -> ScoreResult:
    """Score the last published surface of each level of ``recording`` against ``truth_path``.

    Parameters
    ----------
    recording : str or Path
        The node's ``record.dir``: ``surfaces/`` and the ``inputs_NNNN.igs.mha`` chunks.
    truth_path : str or Path
        Folder of per-level meshes or a CT label volume (:func:`~usx_stream.scoring.truth.load_truth`).
    labels : {"auto", "verse", "totalsegmentator"}, keyword-only
    register : str, keyword-only
        ``"none"`` (the truth is in Reference), ``"auto"`` or ``"fiducials:PAIRS.csv"``.
    launch : LaunchConfig, keyword-only, optional
        ``[compound]``, ``[bone]``, ``source.image_to_reference`` (default: the schema's defaults).
    calibration : TransformRepository, keyword-only, optional
        ImageToProbe when the recorded frames do not carry ImageToReference.
    min_inlier_fraction, max_rms_mm : float, keyword-only
        Refusal thresholds of ``auto`` (see :mod:`usx_stream.scoring.register`).
    max_fiducial_rms_mm : float, keyword-only
        Refusal threshold of ``fiducials``.

    Raises
    ------
    InputError
        Bad input or a registration that cannot be trusted (one line naming why).
    """
    from ..node.launch import default_launch

    method, pairs = parse_register(register)
    launch = launch or default_launch()
    name = launch.source.image_to_reference
    recording_warnings: list[str] = []
    published = last_surfaces(recording, warnings=recording_warnings)
    truth = load_truth(truth_path, labels=labels)
    poses, shapes = frame_poses(recorded_frames(recording), calibration=calibration, image_to_reference=name)
    if len(poses) == 0:
        raise InputError(f"{recording}: no recorded frame (inputs_NNNN.igs.mha): the posterior direction, and "
                         "so the body of each vertebra, comes from the frames' beam direction")
    posterior = -mean_beam(poses)
    if method == "none":
        registration = reg.identity_registration()
    elif method == "fiducials":
        registration = reg.register_fiducials(pairs, max_rms_mm=max_fiducial_rms_mm)
    else:
        bone = bone_points_from_frames(recorded_frames(recording), poses, shapes, launch, calibration=calibration)
        registration = reg.register_auto(bone, truth.meshes, posterior, min_inlier_fraction=min_inlier_fraction,
                                         max_rms_mm=max_rms_mm)
    levels, clouds = score_levels(published, truth.meshes, registration, posterior)
    if not levels:
        raise InputError(f"no level in both the recording ({sorted(published)}) and the truth ({sorted(truth.meshes)})")
    warnings = _frame_warnings(method, levels)
    for w in warnings:
        log.warning("%s", w)
    warnings = recording_warnings + warnings  # the recording's were logged as they were found
    report = {
        "warnings": warnings,
        "levels": levels,
        "summary": summary(levels),
        "registration": registration.as_json(),
        "truth": truth.describe(truth_path),
        "recording": {"path": str(recording), "frames_placed": int(len(poses)),
                      "levels_published": sorted(published),
                      "levels_without_truth": sorted(set(published) - set(truth.meshes)),
                      "levels_not_published": sorted(set(truth.meshes) - set(published)),
                      "posterior_ref": np.round(posterior, 6).tolist()},
    }
    return ScoreResult(report, clouds, posterior)


def _frame_warnings(method: str, levels: dict) -> list[str]:
    """Scores that say the truth and the surfaces are not in one frame, which ``--register none`` assumes."""
    median = float(np.median([s["assd_mm"] for s in levels.values()]))
    if method != "none" or not median > FAR_APART_MM:
        return []
    return [f"the surfaces are a median {median:.0f} mm from the truth: with --register none the truth must "
            "already be in Reference (a CT's scanner frame is not); use --register auto or fiducials:PAIRS.csv"]
