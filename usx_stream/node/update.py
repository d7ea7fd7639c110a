"""Surface update: one volume snapshot -> completed, meshed vertebra surfaces in the publish frame.

Runs on the completion thread, latest-wins: each update takes the newest snapshot, so a slow update
never builds a queue. Steps (each timed in telemetry):

1. ``bone_points``: bone points from the compounded bone channel;
2. ``levels``: level centres from the X-ray labelmap (back-projected onto the spine's mid-sagittal plane,
   which passes through the bone points' centroid — the spinous processes lie on the midline), else the
   launch file's landmarks; split of the bone points per level; per level, the canonical axes
   (``completion.prepare``) and the labelmap points on the vertebra's mid-sagittal plane (multimodal) —
   US-only until an X-ray arrives, flagged in the surface metadata;
3. the completion front door (``completion.front.complete_levels``), all in Reference, mm: ``prepare``
   (batched resampling to the network's point counts, unit frames), ``complete`` (every visible level in
   one batch through the engine), ``body_fit`` (multimodal, ``xray.fit_body``: each completed body fitted to
   its X-ray silhouette: height along the cranial axis, depth about the posterior wall);
   ``uncertainty`` (``completion.uncertainty``): with ``error_head`` (the default) each completed point gets
   the expected distance to the true surface in mm from the engine's learned error head, every update
   (``completion.error_head``; a few ms on a CPU); with ``latent`` the same call decodes
   ``completion.uncertainty_samples`` K latent draws with the mean and each point gets their spread in mm,
   on a CPU every ``completion.uncertainty_period_s`` (and whenever a level or the fusion has no spread yet;
   between runs the level's last spread is reused, carried from the points it was measured on), on a GPU
   every update;
4. ``mesh``: completed points -> watertight mesh within the triangle budget; the spread is carried to the
   mesh vertices (``surface.mesh.transfer_point_values``) as ``Surface.point_data["uncertainty_mm"]``.

Steps 3-4 run only for the levels whose inputs changed since their surface was completed
(``completion.reuse_change``, ``reuse_rotation_deg``, ``reuse_shift_mm``; :mod:`usx_stream.node.reuse`): every
other visible level publishes its last surface again (a copy with ``completed_age_s`` in its metadata and the
timestamp of the frames it was completed from), so nothing disappears and a level the probe is not over costs
nothing. ``UpdateResult.completed`` / ``reused`` and the telemetry counters ``levels_completed`` /
``levels_reused`` say which, and ``reuse_miss_<reason>`` (``node.reuse.MISS_REASONS``) why a level was
completed again.

Every surface's metadata says what coverage produced it: ``bone_points`` (the level's bone points),
``xray_level`` (``yes`` when its X-ray labelmap points went into the completion), and with an uncertainty
``uncertainty_method`` (``error_head`` / ``latent``), ``uncertainty_mean_mm``, ``uncertainty_max_mm`` (over the
vertices), ``uncertainty_age_s`` (how old the reused value is; 0 when measured in this update) and, for
``latent``, ``uncertainty_samples`` (K).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..bone.points import extract_bone_points, is_tensor
from ..bone.split import choose_level_centres, implausible_centres, split_levels
from ..completion import prepare as prep
from ..completion.front import LevelPoints, complete_levels, prepare_levels
from ..frames import LEVELS, Surface, VertebraCloud, Volume
from ..surface.mesh import mesh_points, transfer_point_values
from .compute import choose_surface, cuda_available
from .reuse import LevelReuse
from .status import node_status
from .telemetry import Telemetry
from ..xray import backproject as bp
from ..xray.cache import XraySnapshot

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
    completed: list[str] = field(default_factory=list)     # levels completed and meshed in this update
    reused: list[str] = field(default_factory=list)        # levels that kept their last surface (node.reuse)


@dataclass
class UpdateInputs:
    """Steps 1-2 of an update: the fusion used, where the level centres came from, the bone points of
    each level (Reference, mm) and the completion input of each visible level (Reference, mm, with its
    canonical axes) as the completion front door takes it."""

    fusion: str
    centres_source: str
    per_level: dict[str, np.ndarray]
    levels: list[LevelPoints]
    xray_expected: bool = False     # the launch file enables the X-ray (so "waiting for X-ray" is meaningful)
    min_points: int = 1
    num_partial: int = 0            # the network's input point counts (for ``clouds``)
    num_labelmap: int = 0
    seed: int = 0
    blocked: str = ""               # why no level could be split at all (a user-facing line), else empty
    xray_unlabelled: bool = False   # an X-ray is there but its labelmap places no level
    axis_note: str = ""             # bone.cranial_axis contradicted by the known levels (told, not blocking)

    @cached_property
    def clouds(self) -> list[VertebraCloud]:
        """Every visible level's network input in its unit frame, exactly as the update feeds it."""
        prepared = prepare_levels(self.levels, num_partial=self.num_partial, num_labelmap=self.num_labelmap,
                                  multimodal=self.fusion == "multimodal", seed=self.seed)
        return [VertebraCloud(level=p.level, partial=p.partial_unit, labelmap_points=p.labelmap_unit,
                              model_to_reference=p.model_to_input) for p in prepared if p is not None]


def xray_level_centres(xray: XraySnapshot, bone_ref_mm: np.ndarray, lateral_hint=None) -> dict[str, np.ndarray]:
    """Level centres (Reference, mm) from the labelmap on the spine's mid-sagittal plane."""
    if not (xray.ready and len(bone_ref_mm)):
        return {}
    midline = bone_ref_mm.mean(axis=0)
    normal = bp.viewing_direction(xray.geometry, midline)
    centres = bp.level_centres(xray.labelmap, xray.geometry, plane_point_mm=midline, plane_normal=normal)
    return {lv: c for lv, c in zip(LEVELS, centres) if np.all(np.isfinite(c))}


class SurfaceUpdater:
    """Turns snapshots into surfaces. ``engines`` maps ``"multimodal"`` / ``"us_only"`` to
    :class:`~usx_stream.completion.engine.CompletionEngine` objects (the US-only one is the fallback used
    until an X-ray arrives). ``completion`` is the launch file's ``[completion]`` table (its ``uncertainty``,
    ``uncertainty_samples``, ``uncertainty_period_s`` and reuse keys); None: no uncertainty, no reuse."""

    def __init__(self, engines: dict, *, bone, xray_cfg, surface, publish_frame: str = "Reference",
                 telemetry: Telemetry | None = None, seed: int = 0, completion=None) -> None:
        self.engines = engines
        self._bone, self._xray, self._surface = bone, xray_cfg, surface
        self.publish_frame = publish_frame
        self.telemetry = telemetry or Telemetry()
        self.seed = seed
        self.landmarks = {k: np.asarray(v, dtype=np.float64) for k, v in (bone.landmarks_mm or {}).items()}
        axis = getattr(bone, "cranial_axis", None)
        self.cranial_axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis) if axis else None
        self._pool, self._pool_size = None, 0
        # a node built by assemble.build_node has these resolved (compute.py); "auto" here for bare configs
        self.mesh_backend, self.mesh_device = choose_surface(getattr(surface, "backend", "scipy"),
                                                             getattr(surface, "device", "auto"), cuda=cuda_available())
        self.uncertainty = str(completion.uncertainty) if completion is not None else "off"
        samples = int(completion.uncertainty_samples) if completion is not None else 0   # 0 unless latent
        self.uncertainty_samples = samples if self.uncertainty == "latent" else 0
        self.uncertainty_period_s = float(completion.uncertainty_period_s) if completion is not None else 0.0
        self.clock = time.monotonic
        # level -> (fusion, completed points mm (N, 3), spread mm (N,), clock time measured); completion thread only
        self._spread: dict[str, tuple[str, np.ndarray, np.ndarray, float]] = {}
        self._spread_time = -np.inf
        self.reuse = LevelReuse(change=float(getattr(completion, "reuse_change", 0.0) or 0.0),
                                rotation_deg=float(getattr(completion, "reuse_rotation_deg", 1.0)),
                                shift_mm=float(getattr(completion, "reuse_shift_mm", 0.5)),
                                voxel_mm=float(bone.point_voxel_mm))

    def inputs(self, volume: Volume, *, beam_direction: np.ndarray, xray: XraySnapshot | None,
               force_fusion: str | None = None) -> UpdateInputs:
        """Steps 1-2: the completion input of every visible level, exactly as :meth:`update` feeds it (its
        ``clouds``, the unit-frame network inputs, are what ``usx-stream dataset --node-sessions`` trains on)."""
        t = self.telemetry
        with t.time("bone_points"):
            bone = extract_bone_points(volume, threshold=self._bone.probability_threshold,
                                       beam_direction=beam_direction, voxel_mm=self._bone.point_voxel_mm)
        if is_tensor(volume.channels.get("bone")):   # a torch-compounded channel: extracted on its device
            t.count("bone_points_on_device")
        use_xray = xray is not None and xray.ready and self._xray.enabled
        with t.time("levels"):
            xray_centres = xray_level_centres(xray, bone) if use_xray else {}
            centres, source = choose_level_centres(xray_centres=xray_centres or None, landmarks=self.landmarks or None)
            # Levels placed by landmarks have no labelmap points: only X-ray levels can be fused with the X-ray.
            fusion = force_fusion or ("multimodal" if source == "xray" else "us_only")
            blocked = self._why_not_split(centres, source, fusion)
            per_level = (split_levels(bone, centres, axis=self.cranial_axis,
                                      max_radius_mm=self._bone.split_max_radius_mm) if centres and not blocked else {})
            visible = [lv for lv, pts in per_level.items() if len(pts) >= max(self._bone.min_points, 1)]
            levels = (self._level_points(visible, per_level, centres, beam_direction,
                                         xray if fusion == "multimodal" else None) if visible else [])
        cfg = self.engines[fusion].cfg
        return UpdateInputs(fusion, source, per_level, levels, xray_expected=bool(self._xray.enabled),
                            min_points=max(self._bone.min_points, 1), num_partial=cfg.num_partial,
                            num_labelmap=cfg.num_labelmap, seed=self.seed, blocked=blocked,
                            xray_unlabelled=use_xray and not xray.levels, axis_note=self._axis_note(centres))

    def _why_not_split(self, centres: dict, source: str, fusion: str) -> str:
        """Why these level centres cannot be split at all, as a status line; empty when they can."""
        problem = implausible_centres(centres)
        if problem:
            return f"{source}: {problem}"
        if len(centres) == 1 and self.cranial_axis is None:
            # one centre gives no cranio-caudal direction to split along or to orient the vertebra by
            return (f"{next(iter(centres))} only: one level centre ({source}) needs bone.cranial_axis in the "
                    "launch file, or two or more levels")
        if fusion == "multimodal" and source not in ("xray", "none"):
            return f"multimodal needs the X-ray's levels; the level centres are from {source}"
        return ""

    def _axis_note(self, centres: dict) -> str:
        """A configured cranial axis that the known levels contradict: it would turn a lone level upside down."""
        levels = [lv for lv in LEVELS if lv in centres]
        if self.cranial_axis is None or len(levels) < 2:
            return ""
        if (centres[levels[0]] - centres[levels[-1]]) @ self.cranial_axis >= 0:
            return ""
        return f"bone.cranial_axis points caudally ({levels[0]} lies below {levels[-1]} along it): flip it"

    def update(self, volume: Volume, *, beam_direction: np.ndarray, xray: XraySnapshot | None,
               timestamp: float = 0.0, force_fusion: str | None = None, reuse: bool = True,
               xray_rejected: str | None = None) -> UpdateResult:
        """One surface update from ``volume``; ``force_fusion`` picks the model regardless of the X-ray;
        ``xray_rejected`` is why the last X-ray was refused, for the status (:func:`node_status`).

        Levels whose inputs are within ``completion.reuse_*`` of those their last surface was completed
        from keep that surface (:mod:`usx_stream.node.reuse`); the others are completed and meshed.
        ``reuse=False`` completes every level from these inputs: the result then depends on the volume alone,
        not on when earlier updates happened to run."""
        t = self.telemetry
        inputs = self.inputs(volume, beam_direction=beam_direction, xray=xray, force_fusion=force_fusion)
        fusion = inputs.fusion
        result = UpdateResult(fusion=fusion, centres_source=inputs.centres_source,
                              status=node_status(inputs, xray_rejected=xray_rejected))
        if not inputs.levels:
            return result
        now = self.clock()
        seen = {c.level: self.reuse.inputs_of(c, fusion, now) for c in inputs.levels}
        misses = {c.level: self.reuse.miss_reason(seen[c.level], c.level) if reuse else "off" for c in inputs.levels}
        todo = [c for c in inputs.levels if misses[c.level] is not None]
        for c in todo:
            if misses[c.level] != "off":
                t.count(f"reuse_miss_{misses[c.level]}")
        fresh = self._complete_and_mesh(inputs, todo, seen, timestamp, now) if todo else {}
        failed = {c.level for c in todo} - set(fresh)          # nothing to complete (no surface, as before)
        for c in inputs.levels:   # level order, reused or not
            lv = c.level
            if lv in failed:
                continue
            result.partial_ref_mm[lv] = inputs.per_level[lv]
            if lv in fresh:
                result.surfaces[lv] = fresh[lv]
                result.completed.append(lv)
            else:
                result.surfaces[lv] = self._reused_surface(lv, fusion, now)
                result.reused.append(lv)
            last = self.reuse.levels[lv]
            result.points_ref_mm[lv] = last.points_mm
            if last.labelmap_ref_mm is not None:
                result.labelmap_ref_mm[lv] = last.labelmap_ref_mm
        t.count("levels_completed", len(result.completed))
        if result.reused:
            t.count("levels_reused", len(result.reused))
        return result

    def _complete_and_mesh(self, inputs: UpdateInputs, todo: list[LevelPoints], seen: dict, timestamp: float,
                           now: float) -> dict[str, Surface]:
        """Complete and mesh the levels ``todo`` (one batch); remembered for reuse; their surfaces by level."""
        t, fusion = self.telemetry, inputs.fusion
        engine = self.engines[fusion]
        k = self._draws_now(engine, fusion, [c.level for c in todo], now)
        done = [c for c in complete_levels(engine, todo, seed=self.seed, timer=t.time, samples=k,
                                           error_head=self.uncertainty == "error_head",
                                           fit_body=fusion == "multimodal" and bool(self._xray.fit_body))
                if c.prepared is not None]
        for c in done:
            if c.spread_mm is not None:
                self._spread[c.level] = (fusion, c.points_mm, c.spread_mm, now)
        if k:
            self._spread_time = now
        surfaces = {}
        with t.time("mesh"):
            meshes = self._mesh_levels({c.level: c.points_mm for c in done})
            for c in done:
                surface = meshes[c.level]
                surface.metadata.update({"fusion": fusion, "level": c.level, "centres": inputs.centres_source,
                                         "bone_points": len(inputs.per_level[c.level]),
                                         "xray_level": "yes" if c.prepared.labelmap_unit is not None else "no",
                                         **c.metadata})
                self._attach_spread(surface, c.level, fusion, now)
                surface.timestamp = timestamp
                surfaces[c.level] = surface
        for c in done:
            lm = c.prepared.labelmap_unit
            record = seen[c.level]
            record.points_mm, record.surface = c.points_mm, surfaces[c.level]
            record.labelmap_ref_mm = None if lm is None else c.prepared.to_input_frame(lm)
            self.reuse.remember(c.level, record)
        return surfaces

    def _reused_surface(self, level: str, fusion: str, now: float) -> Surface:
        """The level's last surface again, as a copy saying how old its completion is (``completed_age_s``)."""
        last = self.reuse.levels[level]
        surface = dataclasses.replace(last.surface, metadata=dict(last.surface.metadata),
                                      point_data=dict(last.surface.point_data))
        surface.metadata["completed_age_s"] = round(now - last.clock, 3)
        self._attach_spread(surface, level, fusion, now)
        return surface

    def _draws_now(self, engine, fusion: str, levels: list[str], now: float) -> int:
        """K for this update: every update on a GPU (or with period 0), else once per period, or at once when
        a level has no spread of this fusion yet (the first update, a new level, an X-ray that arrived)."""
        k = self.uncertainty_samples
        if k == 0:
            return 0
        if getattr(getattr(engine, "device", None), "type", "cpu") == "cuda" or self.uncertainty_period_s == 0:
            return k
        stale = any(self._spread.get(lv, ("",))[0] != fusion for lv in levels)
        return k if stale or now - self._spread_time >= self.uncertainty_period_s else 0

    def _attach_spread(self, surface: Surface, level: str, fusion: str, now: float) -> None:
        """``uncertainty_mm`` on the vertices of ``surface`` from the level's last spread of ``fusion``."""
        cached = self._spread.get(level)
        if self.uncertainty == "off" or cached is None or cached[0] != fusion or not len(surface.vertices_mm):
            return
        _, points_mm, spread_mm, measured = cached
        values = transfer_point_values(surface.vertices_mm, points_mm, spread_mm)
        surface.point_data["uncertainty_mm"] = values
        surface.metadata.update({"uncertainty_method": self.uncertainty,
                                 "uncertainty_mean_mm": round(float(values.mean()), 3),
                                 "uncertainty_max_mm": round(float(values.max()), 3),
                                 "uncertainty_age_s": round(now - measured, 3)})
        if self.uncertainty == "latent":
            surface.metadata["uncertainty_samples"] = self.uncertainty_samples

    def _level_points(self, levels, per_level, centres, beam_direction, xray) -> list[LevelPoints]:
        """Each visible level's bone points, labelmap points (``xray`` given) and canonical axes, Reference, mm."""
        posterior = -np.asarray(beam_direction, dtype=np.float64)
        cranial = prep.cranial_axes(centres, fallback_cranial=self.cranial_axis)
        lm_points = {}
        if xray is not None:
            lm_points = bp.backproject_levels(xray.labelmap, xray.geometry, centres_mm=centres,
                                              n_points=self._xray.points_per_level)
            for lv in levels:
                if len(lm_points.get(lv, ())) == 0:
                    raise ValueError(f"update: level {lv} has bone points and an X-ray centre but no labelmap points")
        return [LevelPoints(lv, per_level[lv], lm_points.get(lv) if xray is not None else None,
                            prep.vertebra_rotation(cranial=cranial[lv], posterior=posterior)) for lv in levels]

    def _mesh_levels(self, points_by_level: dict[str, np.ndarray]) -> dict[str, Surface]:
        """Every level's mesh, on ``surface.workers`` threads (results in level order either way)."""
        workers = min(int(getattr(self._surface, "workers", 1) or 1), len(points_by_level))
        if self.mesh_backend == "torch" and self.mesh_device == "cuda":
            workers = 1                        # one device: threads would only queue behind each other
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
                           backend=self.mesh_backend, device=self.mesh_device if self.mesh_backend == "torch" else None,
                           frame=self.publish_frame, name=f"{level}_Completed")
