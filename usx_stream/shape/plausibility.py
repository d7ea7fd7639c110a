"""Is a sampled spine anatomically plausible? Checks used to reject and redraw samples, and by tests.

What is checked (every check on the meshes as sampled, mm):

- ``statistical``: the squared Mahalanobis distance of each level's mode coefficients is at most the chi-square
  quantile of ``sd`` standard deviations in one dimension, ``sd^2`` (a sample beyond the drawing limit is
  out of the population the model was learnt from);
- ``self_intersection``: exact edge-triangle crossings between non-adjacent triangles of one level's mesh
  (:func:`.geometry.self_intersections`); at most ``max_crossing_fraction`` of the edges may cross, since
  the thin laminae of a 1,200-vertex mesh registered onto some real surfaces already touch locally;
- ``collision``: no vertex of a level lies inside its neighbour deeper than ``max_penetration_mm`` (default
  2 mm: facet joints articulate and smoothed CT segmentations of neighbours touch there; generalised
  winding number > 0.5, depth = exact distance to the neighbour's surface);
- ``dimensions``: vertebral body width (left-right), depth (antero-posterior) and height (cranio-caudal),
  robust extents of the body vertices in the level's frame (:func:`.ssm.body_dimensions`), within
  :data:`BODY_RANGES_MM`.

Body ranges: Panjabi et al., "Human lumbar vertebrae: quantitative three-dimensional anatomy", Spine 1992,
17(3):299-306, report lumbar endplate widths of about 40-55 mm, endplate depths of about 30-40 mm and
body heights of about 23-30 mm (L1 to L5). The limits below widen those ranges by 5 mm on each side:
the extents here are measured on whole surfaces (rims and osteophytes included), not with calipers on
endplates, and the model must accept the real vertebrae it was built from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..frames import Surface
from .geometry import point_to_mesh_distance, self_intersections, winding_number
from .ssm import ShapeModel, body_dimensions

BODY_RANGES_MM = {"width": (35.0, 60.0), "depth": (25.0, 45.0), "height": (18.0, 35.0)}


@dataclass
class Plausibility:
    """Outcome of :func:`check_spine`.

    Attributes
    ----------
    ok : bool
        Every check passed.
    failures : list of str
        One line per failed check, naming the level and the value.
    measures : dict
        Per level: ``mahalanobis2``, ``crossings``, ``width``/``depth``/``height`` (mm); per pair
        ``"L1-L2"``: ``penetration_mm`` (deepest vertex of one inside the other).
    """

    ok: bool
    failures: list[str] = field(default_factory=list)
    measures: dict = field(default_factory=dict)


def check_spine(model: ShapeModel, spine: dict[str, Surface], coefficients: dict[str, np.ndarray], *,
                sd: float = 3.0, max_crossing_fraction: float = 0.05, max_penetration_mm: float = 2.0,
                local: dict[str, np.ndarray] | None = None) -> Plausibility:
    """Check a spine drawn from ``model``.

    Parameters
    ----------
    model : ShapeModel
    spine : dict level -> Surface
        The levels in place (any common frame, mm), with the model's triangles.
    coefficients : dict level -> (K,) ndarray
        Mode coefficients of each level, SD units.
    sd : float, keyword-only
        Statistical limit (see the module docstring).
    max_crossing_fraction, max_penetration_mm : float, keyword-only
        Self-intersection and collision tolerances.
    local : dict level -> (V, 3) ndarray or None, keyword-only
        Each level's vertices in its own model frame (for the body dimensions); None rebuilds them
        from ``coefficients``.
    """
    failures, measures = [], {}
    for level, surf in spine.items():
        lm = model.levels[level]
        b = np.asarray(coefficients.get(level, np.zeros(len(lm.variances))), dtype=np.float64)
        m2 = float(b @ b)
        verts_local = local[level] if local is not None else lm.shape(b)
        width, depth, height = body_dimensions(verts_local, lm.body)
        crossings = self_intersections(surf.vertices_mm, surf.triangles)
        n_edges = len(surf.triangles) * 3 // 2
        measures[level] = {"mahalanobis2": m2, "crossings": crossings, "width": float(width),
                           "depth": float(depth), "height": float(height)}
        if m2 > sd ** 2:
            failures.append(f"{level}: Mahalanobis distance {np.sqrt(m2):.2f} SD > {sd}")
        if crossings > max_crossing_fraction * n_edges:
            failures.append(f"{level}: {crossings} self-intersecting edges (> {max_crossing_fraction:.1%} of {n_edges})")
        for name, value in (("width", width), ("depth", depth), ("height", height)):
            lo, hi = BODY_RANGES_MM[name]
            if not lo <= value <= hi:
                failures.append(f"{level}: body {name} {value:.1f} mm outside [{lo}, {hi}]")
    names = list(spine)
    for a, b in zip(names[:-1], names[1:]):
        depth = max(_penetration(spine[a], spine[b]), _penetration(spine[b], spine[a]))
        measures[f"{a}-{b}"] = {"penetration_mm": depth}
        if depth > max_penetration_mm:
            failures.append(f"{a}-{b}: vertices {depth:.1f} mm inside the neighbour (> {max_penetration_mm})")
    return Plausibility(not failures, failures, measures)


def _penetration(inner: Surface, outer: Surface) -> float:
    """Deepest vertex of ``inner`` inside the closed surface ``outer``, mm (0 when none is inside)."""
    v = np.asarray(inner.vertices_mm)
    lo, hi = outer.vertices_mm.min(0), outer.vertices_mm.max(0)
    cand = v[np.all((v >= lo) & (v <= hi), axis=1)]
    if len(cand) == 0:
        return 0.0
    # only vertices near the other surface can be inside it at a shallow depth; deep ones are caught by
    # the winding number, which is evaluated on every candidate
    wn = winding_number(cand, outer.vertices_mm, outer.triangles)
    inside = cand[wn > 0.5]
    if len(inside) == 0:
        return 0.0
    return float(point_to_mesh_distance(inside, outer.vertices_mm, outer.triangles).max())

