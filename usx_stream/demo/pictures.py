"""Pictures for people: meshes, tracked image planes and point clouds in 3D, rendered off-screen.

matplotlib (Agg) is used because it renders headless everywhere; open3d's renderer needs Vulkan and
VTK would add ~200 MB to the install for a few figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..frames import Surface

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


def _decimated(surface: Surface, max_triangles: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and triangles with about ``max_triangles`` (matplotlib sorts every polygon on each draw,
    and a 100k-triangle mesh would take minutes and look no better)."""
    if len(surface.triangles) <= max_triangles:
        return surface.vertices_mm, surface.triangles
    from .._deps import import_open3d

    o3d = import_open3d()
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(np.asarray(surface.vertices_mm, np.float64)),
                                     o3d.utility.Vector3iVector(np.asarray(surface.triangles, np.int32)))
    # Vertex clustering is ~50x faster than quadric decimation and looks the same at figure size: pick the
    # cell so that the surface area holds about max_triangles / 2 cells.
    cell_mm = float(np.sqrt(2.0 * mesh.get_surface_area() / max_triangles))
    mesh = mesh.simplify_vertex_clustering(voxel_size=cell_mm)
    return np.asarray(mesh.vertices), np.asarray(mesh.triangles)


def _add_mesh(ax, surface: Surface, colour: str, alpha: float, max_triangles: int = 3000,
              scalars: tuple[str, float] | None = None) -> None:
    """``scalars`` = (point_data name, value at the top of the colour map): faces coloured by the mean of their
    vertices' values (``viridis``, 0 to the top value) instead of ``colour``, where the surface has them."""
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    vertices, tris = _decimated(surface, max_triangles)
    if len(tris) == 0:
        return
    poly = vertices[tris]
    normals = np.cross(poly[:, 1] - poly[:, 0], poly[:, 2] - poly[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    light = np.abs(normals @ _unit([0.4, 0.5, 0.75])) * 0.65 + 0.35
    import matplotlib.colors as mcolors

    base = np.array(mcolors.to_rgb(colour))
    values = surface.point_data.get(scalars[0]) if scalars else None
    if values is not None and len(values) == len(surface.vertices_mm):
        import matplotlib
        from scipy.spatial import cKDTree

        if vertices is not surface.vertices_mm:      # decimated: each new vertex takes its nearest old one's value
            values = np.asarray(values)[cKDTree(surface.vertices_mm).query(vertices)[1]]
        per_face = np.asarray(values, dtype=np.float64)[tris].mean(axis=1) / max(scalars[1], 1e-9)
        base = matplotlib.colormaps["viridis"](np.clip(per_face, 0.0, 1.0))[:, :3]
    face = np.c_[light[:, None] * base, np.full(len(light), alpha)]
    ax.add_collection3d(Poly3DCollection(poly, facecolors=face, edgecolors="none"))


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


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


@dataclass
class Panel:
    """One 3D view: meshes (name -> Surface, colour by level prefix, grey otherwise), image planes,
    point sets (name -> (N, 3) mm), a view direction (elevation, azimuth in degrees) and a title."""

    meshes: dict[str, Surface]
    planes: Sequence[ImagePlane] = ()
    points: dict[str, np.ndarray] | None = None
    view: tuple[float, float] = (15, -60)
    title: str = ""
    mesh_alpha: float = 0.9
    colour_by: str | None = None        # a Surface.point_data name (e.g. "uncertainty_mm"): meshes coloured by it
    colour_label: str | None = None     # the colour bar's label, with its unit (default: colour_by)


def _bounds(panels: Sequence[Panel]) -> np.ndarray:
    parts = []
    for panel in panels:
        parts += [s.vertices_mm for s in panel.meshes.values() if len(s.vertices_mm)]
        parts += [np.asarray(p) for p in (panel.points or {}).values() if len(p)]
        for plane in panel.planes:
            h, w = plane.pixels.shape[:2]
            corners = np.array([[0, 0, 0, 1], [w, 0, 0, 1], [0, h, 0, 1], [w, h, 0, 1]], dtype=np.float64)
            parts.append((plane.image_to_frame @ corners.T)[:3].T)
    return np.vstack(parts) if parts else np.zeros((1, 3))


def render_panels(path: str | Path, panels: Sequence[Panel], *, title: str = "", plane_stride: int = 4) -> Path:
    """Render panels side by side (shared axis limits) to a PNG; returns the path."""
    plt, fig = _figure((6 * len(panels), 6.2))
    allpts = _bounds(panels)
    for n, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), n + 1, projection="3d")
        scalars = None
        if panel.colour_by:
            found = [s.point_data[panel.colour_by] for s in panel.meshes.values() if panel.colour_by in s.point_data]
            top = float(np.quantile(np.concatenate(found), 0.98)) if found and sum(map(len, found)) else 0.0
            scalars = (panel.colour_by, top) if found else None
            if scalars:
                import matplotlib

                norm = matplotlib.colors.Normalize(vmin=0.0, vmax=top)
                fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax, shrink=0.5,
                             label=panel.colour_label or panel.colour_by)
        for name, surface in panel.meshes.items():
            _add_mesh(ax, surface, LEVEL_COLOURS.get(name[:2], "#bdbdbd"), panel.mesh_alpha, scalars=scalars)
        for plane in panel.planes:
            _add_plane(ax, plane, plane_stride)
        for (name, pts), colour in zip((panel.points or {}).items(), ("#08519c", "#ff7f00", "#6a3d9a")):
            pts = np.asarray(pts)
            if len(pts):
                ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=0.5, c=colour, label=name, depthshade=False)
        _equal_axes(ax, allpts)
        ax.view_init(elev=panel.view[0], azim=panel.view[1])
        ax.set_title(panel.title, fontsize=10)
        if any(len(p) for p in (panel.points or {}).values()):
            ax.legend(loc="upper left", fontsize=8, markerscale=12)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def render_scene(path: str | Path, *, meshes: dict[str, Surface], planes: Sequence[ImagePlane] = (),
                 points: dict[str, np.ndarray] | None = None, title: str = "",
                 views: Sequence[tuple[float, float]] = ((15, -60), (5, 0)), plane_stride: int = 4,
                 mesh_alpha: float = 0.9, colour_by: str | None = None) -> Path:
    """The same scene from each of ``views`` (elevation, azimuth in degrees); see :func:`render_panels`.
    ``colour_by``: colour the meshes by that per-vertex value (``"uncertainty_mm"``) where they carry it."""
    panels = [Panel(meshes, planes, points, view, mesh_alpha=mesh_alpha, colour_by=colour_by) for view in views]
    return render_panels(path, panels, title=title, plane_stride=plane_stride)
