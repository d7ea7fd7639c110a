"""Pictures for people: meshes, tracked image planes and point clouds in 3D, rendered off-screen.

matplotlib (Agg) is used because it renders headless everywhere; open3d's renderer needs Vulkan and
VTK would add ~200 MB to the install for a few figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .frames import Surface

LEVEL_COLOURS = {
    "L1": "#e6550d", "L2": "#31a354", "L3": "#3182bd", "L4": "#756bb1", "L5": "#de2d26",
}


@dataclass
class ImagePlane:
    """A 2D image placed in 3D.

    pixels : (H, W) ndarray, grey values; image_to_frame : (4, 4) maps pixel (i, j, 0) to the plot frame (mm).
    """

    pixels: np.ndarray
    image_to_frame: np.ndarray
    label: str = ""


def _figure(size=(12, 6)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=size, dpi=110)


def _add_mesh(ax, surface: Surface, colour: str, alpha: float, max_triangles: int = 6000) -> None:
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    tris = surface.triangles
    if len(tris) > max_triangles:  # matplotlib sorts every polygon per draw: keep figures quick
        tris = tris[:: int(np.ceil(len(tris) / max_triangles))]
    poly = surface.vertices_mm[tris]
    normals = np.cross(poly[:, 1] - poly[:, 0], poly[:, 2] - poly[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    light = np.clip(normals @ np.array([0.3, -0.6, 0.75]), 0.0, 1.0) * 0.6 + 0.4
    import matplotlib.colors as mcolors

    base = np.array(mcolors.to_rgb(colour))
    face = np.c_[light[:, None] * base, np.full(len(light), alpha)]
    ax.add_collection3d(Poly3DCollection(poly, facecolors=face, edgecolors="none"))


def _add_plane(ax, plane: ImagePlane, stride: int) -> None:
    img = np.asarray(plane.pixels, dtype=np.float64)[::stride, ::stride]
    h, w = img.shape
    jj, ii = np.mgrid[0:h, 0:w] * stride
    pts = np.stack([ii.ravel(), jj.ravel(), np.zeros(ii.size), np.ones(ii.size)]) .astype(np.float64)
    xyz = (plane.image_to_frame @ pts)[:3].reshape(3, h, w)
    grey = img / max(float(img.max()), 1.0)
    colours = np.stack([grey, grey, grey, np.full_like(grey, 0.85)], axis=-1)
    ax.plot_surface(xyz[0], xyz[1], xyz[2], facecolors=colours, rstride=1, cstride=1,
                    linewidth=0, antialiased=False, shade=False)


def _equal_axes(ax, points: np.ndarray) -> None:
    lo, hi = points.min(axis=0), points.max(axis=0)
    centre, half = (lo + hi) / 2, (hi - lo).max() / 2
    for setter, c in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), centre):
        setter(c - half, c + half)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.set_zlabel("z (mm)")


def render_scene(
    path: str | Path,
    *,
    meshes: dict[str, Surface],
    planes: Sequence[ImagePlane] = (),
    points: dict[str, np.ndarray] | None = None,
    title: str = "",
    views: Sequence[tuple[float, float]] = ((15, -60), (5, 0)),
    plane_stride: int = 4,
    mesh_alpha: float = 0.9,
) -> Path:
    """Render meshes (keyed by level or name), image planes and point sets to a PNG, one panel per view.

    meshes : name -> Surface (mm); points : name -> (N, 3) mm; views : (elevation, azimuth) degrees.
    Returns the written path.
    """
    plt, fig = _figure((6 * len(views), 6))
    everything = [s.vertices_mm for s in meshes.values()] + [np.asarray(p) for p in (points or {}).values() if len(p)]
    for plane in planes:
        h, w = plane.pixels.shape[:2]
        corners = np.array([[0, 0, 0, 1], [w, 0, 0, 1], [0, h, 0, 1], [w, h, 0, 1]], dtype=np.float64)
        everything.append((plane.image_to_frame @ corners.T)[:3].T)
    allpts = np.vstack(everything) if everything else np.zeros((1, 3))
    for n, (elev, azim) in enumerate(views):
        ax = fig.add_subplot(1, len(views), n + 1, projection="3d")
        for name, surface in meshes.items():
            _add_mesh(ax, surface, LEVEL_COLOURS.get(name[:2], "#bdbdbd"), mesh_alpha)
        for plane in planes:
            _add_plane(ax, plane, plane_stride)
        for name, pts in (points or {}).items():
            pts = np.asarray(pts)
            if len(pts):
                ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=1, label=name, depthshade=False)
        _equal_axes(ax, allpts)
        ax.view_init(elev=elev, azim=azim)
        if points:
            ax.legend(loc="upper left", fontsize=8, markerscale=6)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
