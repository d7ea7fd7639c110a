"""Which levels an update completes again, and which keep their last surface.

A vertebra the probe is not over does not change between updates, yet completing and meshing it costs as
much as one that does: on a CPU the five levels' completion, preparation and meshing are most of an
update. :class:`LevelReuse` remembers, per level, the inputs its published surface was completed from
(the fusion, the bone points on the ``voxel_mm`` grid, the labelmap points' centroid, the canonical axes)
and lets an update reuse that surface while the level's current inputs are within the launch file's
tolerances of *those* inputs (not of the previous update's, so slow drift adds up and is completed once it
matters):

- ``change``: the fraction of bone-point cells that differ, ``|A xor B| / |A or B|`` (0.03: 3 %);
- ``rotation_deg``: the angle between the old and new canonical axes (the beam direction and the level
  centres move them);
- ``shift_mm``: how far the bone points' centroid or the labelmap points' centroid moved.

Measured on the latency session (``launch/latency_bench.toml``), two completions of the same level half a
second apart differ by 0.4-1.0 mm ASSD from each other when its bone points changed by 1-5 %: the network's
output moves that much with any new input. A reused surface is therefore no further from the current
inputs' completion than the next update's would be. ``change = 0`` turns reuse off (every visible level is
completed every update, as before).

What the network sees is not touched: a completed level gets exactly the input :meth:`SurfaceUpdater.inputs
<usx_stream.node.update.SurfaceUpdater.inputs>` gives for it; only whether it runs changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..frames import Surface

MISS_REASONS = ("off", "new", "labelmap", "cells", "shift", "rotation")
"""Why a level is completed again: reuse off, no surface of this fusion yet, its labelmap points moved (or came /
went), its bone-point cells changed by more than ``change``, its bone points' centroid moved by more than
``shift_mm``, its canonical axes turned by more than ``rotation_deg``."""


@dataclass
class Completed:
    """One level's last completion and the inputs it came from (completion thread only)."""

    fusion: str
    cells: np.ndarray                  # sorted unique int64 keys of the bone-point cells
    centroid_mm: np.ndarray            # of the bone points
    labelmap_centroid_mm: np.ndarray | None
    rotation: np.ndarray | None
    clock: float                       # when it was completed (the updater's clock)
    points_mm: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    labelmap_ref_mm: np.ndarray | None = None
    surface: Surface | None = None


def cell_keys(points_mm: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Sorted unique int64 keys of the ``voxel_mm`` cells the points fall in (21 bits per axis)."""
    ijk = np.floor(np.asarray(points_mm, dtype=np.float64).reshape(-1, 3) / voxel_mm).astype(np.int64)
    ijk = (ijk + (1 << 20)) & ((1 << 21) - 1)
    return np.unique((ijk[:, 0] << 42) | (ijk[:, 1] << 21) | ijk[:, 2])


def cell_change(a: np.ndarray, b: np.ndarray) -> float:
    """``|a xor b| / |a or b|`` of two sorted unique key arrays (0: same cells, 1: nothing in common)."""
    union = len(np.union1d(a, b))
    if union == 0:
        return 0.0
    return 1.0 - len(np.intersect1d(a, b, assume_unique=True)) / union


def rotation_angle_deg(r0: np.ndarray | None, r1: np.ndarray | None) -> float:
    """Angle of the rotation taking the rows of ``r0`` to those of ``r1``, degrees (None: identity)."""
    a = np.eye(3) if r0 is None else np.asarray(r0, dtype=np.float64)
    b = np.eye(3) if r1 is None else np.asarray(r1, dtype=np.float64)
    return float(np.degrees(np.arccos(np.clip((np.trace(b @ a.T) - 1.0) / 2.0, -1.0, 1.0))))


class LevelReuse:
    """Per-level memory of the last completion and the reuse decision (see the module notes).

    Parameters
    ----------
    change : float
        Largest fraction of changed bone-point cells for reuse, in [0, 1); 0: never reuse.
    rotation_deg, shift_mm : float
        Largest change of the canonical axes (degrees) and of the bone or labelmap centroid (mm) for reuse.
    voxel_mm : float
        Cell size of the bone-point comparison (the node's ``bone.point_voxel_mm``).
    """

    def __init__(self, *, change: float = 0.0, rotation_deg: float = 1.0, shift_mm: float = 0.5,
                 voxel_mm: float = 1.0) -> None:
        if not 0.0 <= change < 1.0:
            raise ValueError(f"completion.reuse_change: must be in [0, 1), got {change!r}")
        self.change, self.rotation_deg, self.shift_mm = float(change), float(rotation_deg), float(shift_mm)
        self.voxel_mm = float(voxel_mm)
        self.levels: dict[str, Completed] = {}

    @property
    def enabled(self) -> bool:
        return self.change > 0.0

    def inputs_of(self, item, fusion: str, clock: float) -> Completed:
        """The comparable summary of one :class:`~usx_stream.completion.front.LevelPoints`."""
        partial = np.asarray(item.partial_mm, dtype=np.float64).reshape(-1, 3)
        lm = None if item.labelmap_mm is None else np.asarray(item.labelmap_mm, dtype=np.float64).reshape(-1, 3)
        return Completed(fusion, cell_keys(partial, self.voxel_mm), partial.mean(axis=0),
                         None if lm is None or not len(lm) else lm.mean(axis=0), item.rotation, clock)

    def reusable(self, now: Completed, level: str) -> bool:
        """Whether ``level``'s last surface stands for inputs ``now``."""
        return self.miss_reason(now, level) is None

    def miss_reason(self, now: Completed, level: str) -> str | None:
        """None when ``level``'s last surface stands for inputs ``now``; else the first reason it does not, one
        of ``MISS_REASONS`` (the telemetry counts them: which tolerance makes a level complete again)."""
        last = self.levels.get(level)
        if not self.enabled:
            return "off"
        if last is None or last.surface is None or last.fusion != now.fusion:
            return "new"
        if (last.labelmap_centroid_mm is None) != (now.labelmap_centroid_mm is None):
            return "labelmap"
        if last.labelmap_centroid_mm is not None and \
                np.linalg.norm(now.labelmap_centroid_mm - last.labelmap_centroid_mm) > self.shift_mm:
            return "labelmap"
        if cell_change(last.cells, now.cells) > self.change:
            return "cells"
        if np.linalg.norm(now.centroid_mm - last.centroid_mm) > self.shift_mm:
            return "shift"
        if rotation_angle_deg(last.rotation, now.rotation) > self.rotation_deg:
            return "rotation"
        return None

    def remember(self, level: str, done: Completed) -> None:
        """Keep ``done`` (with its ``points_mm``, ``labelmap_ref_mm`` and ``surface`` filled in)."""
        self.levels[level] = done

    def forget(self, keep: set[str] | None = None) -> None:
        """Drop every level not in ``keep`` (all of them with None)."""
        self.levels = {lv: c for lv, c in self.levels.items() if keep is not None and lv in keep}
