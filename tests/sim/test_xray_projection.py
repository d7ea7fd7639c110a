"""Simulated lateral X-ray: the labelmap marks rays that really cross each vertebral body."""

from __future__ import annotations

import numpy as np

from usx_stream.frames import LEVELS


def _ray_hits_mesh(origin: np.ndarray, direction: np.ndarray, vertices: np.ndarray, triangles: np.ndarray) -> int:
    """Number of triangles the ray crosses (Möller–Trumbore, all triangles at once)."""
    v0, v1, v2 = (vertices[triangles[:, k]] for k in range(3))
    e1, e2 = v1 - v0, v2 - v0
    p = np.cross(direction, e2)
    det = np.einsum("ij,ij->i", e1, p)
    ok = np.abs(det) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = origin - v0
    u = np.einsum("ij,ij->i", s, p) * inv
    q = np.cross(s, e1)
    v = (q @ direction) * inv
    t = np.einsum("ij,ij->i", e2, q) * inv
    return int(np.count_nonzero(ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)))


def test_labelmap_pixels_back_project_through_their_body(sim_session):
    xray = sim_session.xray
    geometry = xray.geometry
    rng = np.random.default_rng(1)
    for k, level in enumerate(LEVELS, start=1):
        rows, cols = np.nonzero(xray.labelmap == k)
        assert len(rows) > 1000, f"{level}: only {len(rows)} labelled pixels"
        pick = rng.choice(len(rows), 25, replace=False)
        origins, dirs = geometry.pixel_rays(np.stack([cols[pick], rows[pick]], axis=1))
        body = sim_session.spine.vertebrae[level].body_mesh
        for o, d in zip(origins, dirs):
            crossings = _ray_hits_mesh(o, d, body.vertices_mm, body.triangles)
            assert crossings >= 2 and crossings % 2 == 0, f"{level}: ray crosses the body {crossings} times"


def test_labels_follow_the_spine_and_bone_attenuates(sim_session):
    xray = sim_session.xray
    rows_per_level = [np.nonzero(xray.labelmap == k)[0].mean() for k in range(1, 6)]
    assert all(a < b for a, b in zip(rows_per_level, rows_per_level[1:])), "L1 must be above L5 (rows run caudal)"
    # Label centroids lie where the body centroids project.
    for k, level in enumerate(LEVELS, start=1):
        rows, cols = np.nonzero(xray.labelmap == k)
        uv = xray.geometry.project(sim_session.spine.vertebrae[level].body_centroid_mm[None])[0]
        assert np.hypot(cols.mean() - uv[0], rows.mean() - uv[1]) < 6.0
    # Bone adds attenuation: labelled pixels are brighter (higher line integral) than their neighbourhood.
    labelled = xray.labelmap > 0
    rows, cols = np.nonzero(labelled)
    ring = np.zeros_like(labelled)
    ring[rows.min():rows.max(), max(cols.min() - 60, 0):cols.min() - 20] = True
    assert xray.pixels[labelled].mean() > xray.pixels[ring].mean() + 0.3
    assert xray.pixels.dtype == np.float32 and xray.labelmap.dtype == np.uint8
