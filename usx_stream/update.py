"""Surface update: one volume snapshot -> completed, meshed vertebra surfaces in the publish frame.

Runs on the completion thread, latest-wins: each update takes the newest snapshot, so a slow update
never builds a queue. Steps (each timed in telemetry):

1. ``bone_points``: bone points from the compounded bone channel;
2. ``levels``: level centres from the X-ray labelmap (back-projected onto the spine's mid-sagittal plane,
   which passes through the bone points' centroid — the spinous processes lie on the midline), else the
   launch file's landmarks; split of the bone points per level;
3. ``prepare``: per level, canonical frame (``completion.prepare``) and labelmap points on the vertebra's
   mid-sagittal plane (multimodal) — US-only until an X-ray arrives, flagged in the surface metadata;
4. ``complete``: every visible level in one batch through the completion engine;
5. ``body_fit`` (multimodal, ``xray.fit_body``): each completed body fitted to its X-ray silhouette along
   the cranial axis (``completion.body_fit``);
6. ``mesh``: completed points -> watertight mesh within the triangle budget.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .bone.points import extract_bone_points
from .bone.split import choose_level_centres, split_levels
from .completion import prepare as prep
from .completion.body_fit import fit_body_to_silhouette
from .completion.normalize import SCALE_MM
from .frames import LEVELS, Surface, Volume
from .surface.mesh import mesh_points
from .telemetry import Telemetry
from .xray import backproject as bp
from .xray.cache import XraySnapshot

log = logging.getLogger(__name__)


@dataclass
class UpdateResult:
    """What one update produced (surfaces and what went into them, for reports and pictures)."""

    surfaces: dict[str, Surface] = field(default_factory=dict)
    points_ref_mm: dict[str, np.ndarray] = field(default_factory=dict)      # completed clouds
    partial_ref_mm: dict[str, np.ndarray] = field(default_factory=dict)     # bone points per level
    labelmap_ref_mm: dict[str, np.ndarray] = field(default_factory=dict)    # back-projected X-ray points
    fusion: str = "us_only"
    centres_source: str = "none"
    status: str = ""                                                       # what a user is told (see node_status)


@dataclass
class UpdateInputs:
    """Steps 1-3 of an update: the fusion used, where the level centres came from, the bone points of
    each level (Reference, mm) and the prepared network input of each visible level."""

    fusion: str
    centres_source: str
    per_level: dict[str, np.ndarray]
    clouds: list
    xray_expected: bool = False     # the launch file enables the X-ray (so "waiting for X-ray" is meaningful)
    min_points: int = 1


def _level_span(levels: list[str]) -> str:
    """``["L1", "L2", "L3"]`` -> ``"L1–L3"``; non-consecutive levels are listed (``"L1, L3"``)."""
    idx = sorted(LEVELS.index(lv) for lv in levels)
    if len(idx) > 1 and idx == list(range(idx[0], idx[-1] + 1)):
        return f"{LEVELS[idx[0]]}\u2013{LEVELS[idx[-1]]}"
    return ", ".join(LEVELS[i] for i in idx)


def node_status(inputs: UpdateInputs) -> str:
    """One line for the navigation display: what was completed and why any level was not.

    Examples: ``"L1–L5 multimodal"``, ``"L2–L4 us_only (no X-ray); L5: too few bone points (12 < 50)"``,
    ``"waiting for X-ray or level landmarks"``.
    """
    if inputs.centres_source == "none":
        return "waiting for X-ray or level landmarks" if inputs.xray_expected else "waiting for level landmarks"
    done = [c.level for c in inputs.clouds]
    parts = []
    if done:
        why = " (no X-ray)" if inputs.fusion == "us_only" and inputs.xray_expected else ""
        parts.append(f"{_level_span(done)} {inputs.fusion}{why}")
    for lv in LEVELS:
        n = len(inputs.per_level.get(lv, ()))
        if lv in inputs.per_level and lv not in done:
            parts.append(f"{lv}: too few bone points ({n} < {inputs.min_points})")
    if not parts:
        return f"waiting for bone points near the level centres ({inputs.centres_source})"
    return "; ".join(parts)


def xray_level_centres(xray: XraySnapshot, bone_ref_mm: np.ndarray, lateral_hint=None) -> dict[str, np.ndarray]:
    """Level centres (Reference, mm) from the labelmap on the spine's mid-sagittal plane."""
    if not (xray.ready and len(bone_ref_mm)):
        return {}
    midline = bone_ref_mm.mean(axis=0)
    normal = bp.viewing_direction(xray.geometry, midline)
    centres = bp.level_centres(xray.labelmap, xray.geometry, plane_point_mm=midline, plane_normal=normal)
    return {lv: c for lv, c in zip(LEVELS, centres) if np.all(np.isfinite(c))}


def run_engine(engine, partial_unit: np.ndarray, labelmap_unit: np.ndarray | None) -> np.ndarray:
    """(B, N, 3) [+ (B, M, 3)] float32 unit-frame inputs -> (B, K, 3) float32 completed points."""
    import torch

    dev = engine.device
    lm = None if labelmap_unit is None else torch.from_numpy(np.ascontiguousarray(labelmap_unit)).to(dev)
    with torch.inference_mode():
        out = engine.run_device(torch.from_numpy(np.ascontiguousarray(partial_unit)).to(dev), lm)
    return out.float().cpu().numpy()


def fit_bodies(clouds, completed_unit: np.ndarray) -> tuple[list[np.ndarray], dict[str, dict]]:
    """Every multimodal cloud's body fitted to its X-ray silhouette; per level, the fit as surface metadata
    (``xray_body_shift_mm`` cranial, ``xray_body_scale``; or ``xray_body_fit`` = why it was not applied)."""
    fitted, meta = [], {}
    for cloud, unit in zip(clouds, completed_unit):
        out, fit = fit_body_to_silhouette(unit, cloud.labelmap_points)
        fitted.append(out.astype(np.float32))
        meta[cloud.level] = ({"xray_body_shift_mm": round(fit.shift * SCALE_MM, 2), "xray_body_scale": round(fit.scale, 3)}
                             if fit.applied else {"xray_body_fit": f"not applied: {fit.reason}"})
        if not fit.applied:   # every update, twice a second: the surface metadata is where it shows
            log.debug("body fit of %s not applied: %s", cloud.level, fit.reason)
    return fitted, meta


class SurfaceUpdater:
    """Turns snapshots into surfaces. ``engines`` maps ``"multimodal"`` / ``"us_only"`` to
    :class:`~usx_stream.completion.engine.CompletionEngine` objects (the US-only one is the fallback used
    until an X-ray arrives)."""

    def __init__(self, engines: dict, *, bone, xray_cfg, surface, publish_frame: str = "Reference",
                 telemetry: Telemetry | None = None, seed: int = 0) -> None:
        self.engines = engines
        self._bone, self._xray, self._surface = bone, xray_cfg, surface
        self.publish_frame = publish_frame
        self.telemetry = telemetry or Telemetry()
        self.seed = seed
        self.landmarks = {k: np.asarray(v, dtype=np.float64) for k, v in (bone.landmarks_mm or {}).items()}
        self._pool, self._pool_size = None, 0

    def inputs(self, volume: Volume, *, beam_direction: np.ndarray, xray: XraySnapshot | None,
               force_fusion: str | None = None) -> UpdateInputs:
        """Steps 1-3: the network inputs of every visible level, exactly as :meth:`update` feeds them
        (also what ``usx-stream dataset --node-sessions`` trains on)."""
        t = self.telemetry
        with t.time("bone_points"):
            bone = extract_bone_points(volume, threshold=self._bone.probability_threshold,
                                       beam_direction=beam_direction, voxel_mm=self._bone.point_voxel_mm)
        use_xray = xray is not None and xray.ready and self._xray.enabled
        with t.time("levels"):
            centres, source = choose_level_centres(
                xray_centres=xray_level_centres(xray, bone) if use_xray else None, landmarks=self.landmarks or None)
            per_level = split_levels(bone, centres, max_radius_mm=self._bone.split_max_radius_mm) if centres else {}
        fusion = force_fusion or ("multimodal" if use_xray else "us_only")
        levels = [lv for lv, pts in per_level.items() if len(pts) >= max(self._bone.min_points, 1)]
        clouds = []
        if levels:
            with t.time("prepare"):
                clouds = self._prepare(levels, per_level, centres, beam_direction,
                                       xray if fusion == "multimodal" else None)
        return UpdateInputs(fusion, source, per_level, clouds, xray_expected=bool(self._xray.enabled),
                            min_points=max(self._bone.min_points, 1))

    def update(self, volume: Volume, *, beam_direction: np.ndarray, xray: XraySnapshot | None,
               timestamp: float = 0.0, force_fusion: str | None = None) -> UpdateResult:
        """One surface update from ``volume``; ``force_fusion`` picks the model regardless of the X-ray."""
        t = self.telemetry
        inputs = self.inputs(volume, beam_direction=beam_direction, xray=xray, force_fusion=force_fusion)
        fusion, per_level, clouds = inputs.fusion, inputs.per_level, inputs.clouds
        result = UpdateResult(fusion=fusion, centres_source=inputs.centres_source, status=node_status(inputs))
        if not clouds:
            return result
        engine = self.engines[fusion]
        with t.time("complete"):
            partial = np.stack([c.partial for c in clouds])
            labelmap = np.stack([c.labelmap_points for c in clouds]) if fusion == "multimodal" else None
            completed = run_engine(engine, partial, labelmap)
        fit_meta = {}
        if fusion == "multimodal" and self._xray.fit_body:
            with t.time("body_fit"):
                completed, fit_meta = fit_bodies(clouds, completed)
        with t.time("mesh"):
            for cloud, unit in zip(clouds, completed):
                result.points_ref_mm[cloud.level] = prep.to_reference(cloud, unit)
                result.partial_ref_mm[cloud.level] = per_level[cloud.level]
            for level, surface in self._mesh_levels(result.points_ref_mm).items():
                surface.metadata.update({"fusion": fusion, "level": level, "centres": inputs.centres_source,
                                         **fit_meta.get(level, {})})
                surface.timestamp = timestamp
                result.surfaces[level] = surface
        result.labelmap_ref_mm = {c.level: prep.to_reference(c, c.labelmap_points) for c in clouds
                                  if c.labelmap_points is not None}
        return result

    def _prepare(self, levels, per_level, centres, beam_direction, xray):
        posterior = -np.asarray(beam_direction, dtype=np.float64)
        cranial = prep.cranial_axes(centres)
        lm_points = {}
        engine = self.engines["multimodal" if xray is not None else "us_only"]
        if xray is not None:
            lm_points = bp.backproject_levels(xray.labelmap, xray.geometry, centres_mm=centres,
                                              n_points=self._xray.points_per_level)
        for lv in levels:
            if xray is not None and len(lm_points.get(lv, ())) == 0:
                raise ValueError(f"update: level {lv} has bone points and an X-ray centre but no labelmap points")
        # One batched furthest-point sampling for all levels (one sequential loop instead of one per level).
        partial_rs = prep.resample_levels({lv: per_level[lv] for lv in levels}, engine.cfg.num_partial, seed=self.seed)
        lm_rs = (prep.resample_levels({lv: lm_points[lv] for lv in levels}, engine.cfg.num_labelmap, seed=self.seed)
                 if xray is not None else {})
        clouds = []
        for lv in levels:
            rot = prep.vertebra_rotation(cranial=cranial[lv], posterior=posterior)
            lm = lm_points.get(lv) if xray is not None else None
            clouds.append(prep.prepare_vertebra(lv, per_level[lv], lm, rotation=rot, num_partial=engine.cfg.num_partial,
                                                num_labelmap=engine.cfg.num_labelmap, seed=self.seed,
                                                resampled=(partial_rs[lv], lm_rs.get(lv))))
        return clouds

    def _mesh_levels(self, points_by_level: dict[str, np.ndarray]) -> dict[str, Surface]:
        """Every level's mesh, on ``surface.workers`` threads (results in level order either way)."""
        workers = min(int(getattr(self._surface, "workers", 1) or 1), len(points_by_level))
        if workers <= 1:
            return {lv: self._mesh(pts, lv) for lv, pts in points_by_level.items()}
        if self._pool is None or self._pool_size != workers:
            from concurrent.futures import ThreadPoolExecutor

            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="usx-mesh")
            self._pool_size = workers
        futures = {lv: self._pool.submit(self._mesh, pts, lv) for lv, pts in points_by_level.items()}
        return {lv: f.result() for lv, f in futures.items()}

    def close(self) -> None:
        """Stop the meshing threads (the updater can still run afterwards, on the calling thread)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool, self._pool_size = None, 0

    def _mesh(self, points_ref_mm: np.ndarray, level: str) -> Surface:
        s = self._surface
        return mesh_points(points_ref_mm, method=s.method, triangle_budget=s.triangle_budget, grid_mm=s.grid_mm,
                           offset_mm=s.offset_mm or None, project_k=s.project_k, poisson_depth=s.poisson_depth,
                           frame=self.publish_frame, name=f"{level}_Completed")
