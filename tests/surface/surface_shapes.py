"""Point clouds on analytic surfaces and the signed volume of a mesh, for the meshing tests.

A module of its own (not conftest) so that test files import it by a name no other test folder uses.
"""

from __future__ import annotations

import numpy as np

from usx_stream.frames import Surface


def sphere_points(n, radius, rng):
    p = rng.normal(size=(n, 3))
    return radius * p / np.linalg.norm(p, axis=1, keepdims=True)


def torus_points(n, big, small, rng):
    u, v = rng.uniform(0, 2 * np.pi, (2, n))
    # Area-uniform: accept v with probability proportional to the local ring radius.
    keep = rng.uniform(0, big + small, n) < big + small * np.cos(v)
    u, v = u[keep], v[keep]
    r = big + small * np.cos(v)
    return np.stack([r * np.cos(u), r * np.sin(u), small * np.sin(v)], axis=1)


def signed_volume(s: Surface) -> float:
    t = s.vertices_mm[s.triangles]
    return float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6)
