"""Template fitting: a closed template deformed onto a differently posed, scaled and shaped cloud."""

from __future__ import annotations

import numpy as np
import pytest

from usx_stream.surface.mesh import is_watertight, mesh_points
from usx_stream.surface.template_fit import fit_template
from usx_stream.transforms import rotation


def test_sphere_template_fits_a_posed_ellipsoid():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(4000, 3))
    unit = p / np.linalg.norm(p, axis=1, keepdims=True)
    template = mesh_points(10.0 * unit[:2000], triangle_budget=3000)
    assert is_watertight(template.triangles)
    radii = np.array([30.0, 20.0, 14.0])
    r = rotation([1, 2, 3], 0.8)[:3, :3]
    cloud = (unit * radii) @ r.T + [100, -20, 40]
    fitted = fit_template(cloud, template)
    assert is_watertight(fitted.triangles) and np.array_equal(fitted.triangles, template.triangles)
    local = (fitted.vertices_mm - [100, -20, 40]) @ r        # back into the ellipsoid's axes
    level = np.linalg.norm(local / radii, axis=1)             # 1 on the ellipsoid
    assert np.percentile(np.abs(level - 1), 95) < 0.05             # within ~1 mm of the surface


def test_assume_aligned_and_validation():
    rng = np.random.default_rng(1)
    p = rng.normal(size=(3000, 3))
    unit = p / np.linalg.norm(p, axis=1, keepdims=True)
    template = mesh_points(15.0 * unit[:1500], triangle_budget=2000)
    fitted = fit_template(16.0 * unit, template, assume_aligned=True, iterations=3)
    assert np.abs(np.linalg.norm(fitted.vertices_mm, axis=1) - 16).max() < 0.6
    with pytest.raises(ValueError, match="need at least 4 points, got 2"):
        fit_template(np.zeros((2, 3)), template)
    with pytest.raises(ValueError, match="iterations must be positive"):
        fit_template(unit, template, icp_iterations=0)
