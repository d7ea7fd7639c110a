"""Lateral X-ray labelmap of a vertebral body, rendered from its mesh.

The X-ray is the project's one C-arm model, :class:`~usx_stream.xray.geometry.CArmGeometry` (a point
source and a flat detector; :meth:`~usx_stream.xray.geometry.CArmGeometry.lateral` makes a lateral
view), with the patient frame as Reference (mm). :func:`render_body_labelmap` makes the labelmap of one
vertebral body cropped around it: a detector pixel is labelled when the ray from the source to its
centre crosses the body mesh (exact silhouette, by ray casting). The labelled pixels become 3D points
with the node's own back-projection, :func:`usx_stream.xray.backproject.backproject_to_plane`, onto the
vertebra's mid-sagittal plane: that is how the completion network receives the X-ray, a planar point
set aligned with the ultrasound cloud.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..frames import Surface
from ..xray.geometry import CArmGeometry


@dataclass
class CroppedLabelmap:
    """A labelmap crop: ``mask[j, i]`` is detector pixel ``(i0 + i, j0 + j)``.

    Attributes
    ----------
    mask : (h, w) bool ndarray
    offset_ij : (2,) int ndarray
        Detector pixel (column, row) of ``mask[0, 0]``.
    """

    mask: np.ndarray
    offset_ij: np.ndarray

    def labelled_pixels(self) -> np.ndarray:
        """``(N, 2)`` detector pixel indices (column i, row j) of the labelled pixels."""
        j, i = np.nonzero(self.mask)
        return np.stack([i, j], axis=1) + self.offset_ij


def render_body_labelmap(body: Surface, view: CArmGeometry, *, margin_px: int = 4) -> CroppedLabelmap:
    """Labelmap of one vertebral body in ``view``, cropped to its bounding box plus ``margin_px``.

    Parameters
    ----------
    body : Surface
        Closed vertebral-body mesh, patient frame (the view's Reference), mm.
    view : CArmGeometry
        The X-ray view (e.g. :meth:`CArmGeometry.lateral`).
    margin_px : int, keyword-only
        Pixels added around the projected bounding box of the mesh.

    Returns
    -------
    CroppedLabelmap
        Pixels whose source ray crosses the body; empty when the body projects off the detector (or
        lies behind the source).
    """
    from .._deps import import_open3d

    o3d = import_open3d()
    uv = view.project(body.vertices_mm)
    uv = uv[np.all(np.isfinite(uv), axis=1)]  # vertices behind the source have no pixel
    rows, cols = view.detector_shape
    if len(uv) == 0:
        return CroppedLabelmap(np.zeros((0, 0), dtype=bool), np.zeros(2, dtype=int))
    lo = np.maximum(np.floor(uv.min(axis=0)).astype(int) - margin_px, 0)
    hi = np.minimum(np.ceil(uv.max(axis=0)).astype(int) + margin_px, [cols - 1, rows - 1])
    if np.any(hi < lo):
        return CroppedLabelmap(np.zeros((0, 0), dtype=bool), lo)
    ii, jj = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1))
    origins, dirs = view.pixel_rays(np.stack([ii.ravel(), jj.ravel()], axis=1))
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.ascontiguousarray(body.vertices_mm, dtype=np.float32)),
                        o3d.core.Tensor(np.ascontiguousarray(body.triangles, dtype=np.uint32)))
    rays = np.hstack([origins, dirs]).astype(np.float32)
    t_hit = scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
    mask = np.isfinite(t_hit).reshape(ii.shape)
    return CroppedLabelmap(mask, lo)
