"""Cone-beam C-arm geometry: projection of Reference points to detector pixels and pixel rays back.

Frames and conventions (mm):

- ``Xray``: origin at the X-ray source (focal spot); z along the principal ray, from the source towards
  the detector; x along detector columns, y along detector rows (right-handed).
- Detector pixel ``(u, v)`` = (column, row), pixel centres at integer coordinates, row 0 at the top of
  the stored image. The principal point ``(u0, v0)`` is where the principal ray meets the detector.
- ``XrayToReference`` places the source frame in Reference (from calibration, e.g. fiducial
  registration). Pinhole model: ``u = u0 + SDD * x / (z * su)``, ``v = v0 + SDD * y / (z * sv)`` for a
  point ``(x, y, z)`` in ``Xray``, with SDD the source-to-detector distance and ``(su, sv)`` the pixel size.

Files: JSON with the keys of :meth:`CArmGeometry.to_dict` (see ``calibration/README.md``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..transforms import apply, as_matrix


@dataclass(frozen=True)
class CArmGeometry:
    """Intrinsics and pose of a C-arm.

    Attributes
    ----------
    source_to_detector_mm : float
        SDD: distance from the source to the detector plane along the principal ray.
    source_to_isocenter_mm : float
        SOD: distance from the source to the isocentre (rotation centre) along the principal ray.
    detector_shape : (rows, cols)
    pixel_spacing_mm : (2,) float ndarray
        Detector pixel size (column, row), mm.
    principal_point_px : (2,) float ndarray
        (u0, v0) = (column, row) of the principal ray on the detector.
    xray_to_reference : (4, 4) float ndarray
        Rigid pose of the ``Xray`` (source) frame in Reference.
    name : str
    """

    source_to_detector_mm: float
    source_to_isocenter_mm: float
    detector_shape: tuple[int, int]
    pixel_spacing_mm: np.ndarray
    principal_point_px: np.ndarray
    xray_to_reference: np.ndarray
    name: str = ""

    def __post_init__(self) -> None:
        sdd, sod = float(self.source_to_detector_mm), float(self.source_to_isocenter_mm)
        if not sdd > 0:
            raise ValueError(f"source_to_detector_mm: must be positive, got {sdd}")
        if not 0 < sod < sdd:
            raise ValueError(f"source_to_isocenter_mm: expected 0 < value < {sdd}, got {sod}")
        shape = tuple(int(n) for n in self.detector_shape)
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"detector_shape: expected (rows, cols) >= 1, got {self.detector_shape}")
        spacing = np.asarray(self.pixel_spacing_mm, dtype=np.float64).reshape(-1)
        if spacing.shape != (2,) or np.any(spacing <= 0):
            raise ValueError(f"pixel_spacing_mm: expected two positive values, got {self.pixel_spacing_mm}")
        pp = np.asarray(self.principal_point_px, dtype=np.float64).reshape(-1)
        if pp.shape != (2,) or not np.all(np.isfinite(pp)):
            raise ValueError(f"principal_point_px: expected two finite values, got {self.principal_point_px}")
        m = as_matrix(self.xray_to_reference, name="xray_to_reference")
        r = m[:3, :3]
        if not np.allclose(r.T @ r, np.eye(3), atol=1e-5) or np.linalg.det(r) < 0:
            raise ValueError(f"xray_to_reference: expected a rigid transform, got rotation {r.tolist()}")
        object.__setattr__(self, "detector_shape", shape)
        object.__setattr__(self, "pixel_spacing_mm", spacing)
        object.__setattr__(self, "principal_point_px", pp)
        object.__setattr__(self, "xray_to_reference", m)

    @classmethod
    def lateral(cls, target_mm, *, lateral, cranial, source_to_target_mm: float = 700.0,
                source_to_detector_mm: float = 1000.0, pixel_spacing_mm: float = 0.3,
                shape: tuple[int, int] = (1024, 1024), name: str = "lateral") -> "CArmGeometry":
        """A lateral view whose principal ray passes through ``target_mm`` along ``lateral``.

        The source sits ``source_to_target_mm`` from the target on the ``-lateral`` side (the target is
        the isocentre); the detector is perpendicular to the principal ray at ``source_to_detector_mm``
        from the source, the principal point at its centre, its rows running caudally (``y = -cranial``
        made perpendicular to ``lateral``) and its columns along ``y x z``.

        Parameters
        ----------
        target_mm : (3,) array_like
            Point the principal ray passes through (the isocentre), Reference, mm.
        lateral : (3,) array_like, keyword-only
            Viewing direction, source -> detector, Reference (any length).
        cranial : (3,) array_like, keyword-only
            Cranial direction, Reference (any length, not parallel to ``lateral``).
        source_to_target_mm : float, keyword-only
            Source-to-isocentre distance, mm, in ``(0, source_to_detector_mm)``.
        source_to_detector_mm : float, keyword-only
            Source-to-detector distance, mm.
        pixel_spacing_mm : float, keyword-only
            Detector pixel size (square pixels), mm.
        shape : (int, int), keyword-only
            Detector rows, columns.
        name : str, keyword-only

        Returns
        -------
        CArmGeometry
        """
        if not 0 < source_to_target_mm < source_to_detector_mm:
            raise ValueError(
                f"source_to_target_mm: must be in (0, source_to_detector_mm={source_to_detector_mm}), "
                f"got {source_to_target_mm!r}")
        if not pixel_spacing_mm > 0:
            raise ValueError(f"pixel_spacing_mm: must be > 0, got {pixel_spacing_mm!r}")
        w = np.asarray(lateral, dtype=np.float64).reshape(3)
        w = w / np.linalg.norm(w)
        v = -np.asarray(cranial, dtype=np.float64).reshape(3)
        v = v - (v @ w) * w
        v = v / np.linalg.norm(v)
        u = np.cross(v, w)
        xray_to_reference = np.eye(4)
        xray_to_reference[:3, :3] = np.column_stack([u, v, w])
        xray_to_reference[:3, 3] = np.asarray(target_mm, dtype=np.float64).reshape(3) - w * source_to_target_mm
        rows, cols = (int(n) for n in shape)
        return cls(source_to_detector_mm=float(source_to_detector_mm),
                   source_to_isocenter_mm=float(source_to_target_mm), detector_shape=(rows, cols),
                   pixel_spacing_mm=np.full(2, float(pixel_spacing_mm)),
                   principal_point_px=np.array([0.5 * (cols - 1), 0.5 * (rows - 1)]),
                   xray_to_reference=xray_to_reference, name=name)

    @property
    def source_ref_mm(self) -> np.ndarray:
        """Source position in Reference, ``(3,)`` mm."""
        return self.xray_to_reference[:3, 3].copy()

    @property
    def isocenter_ref_mm(self) -> np.ndarray:
        """Isocentre in Reference, ``(3,)`` mm."""
        return self.source_ref_mm + self.source_to_isocenter_mm * self.xray_to_reference[:3, 2]

    @property
    def magnification(self) -> float:
        """Detector magnification of an object at the isocentre (SDD / SOD)."""
        return self.source_to_detector_mm / self.source_to_isocenter_mm

    def intrinsics(self) -> np.ndarray:
        """``(3, 3)`` pinhole matrix K mapping ``Xray`` coordinates to homogeneous pixels (u, v, 1)."""
        f = self.source_to_detector_mm
        su, sv = self.pixel_spacing_mm
        u0, v0 = self.principal_point_px
        return np.array([[f / su, 0.0, u0], [0.0, f / sv, v0], [0.0, 0.0, 1.0]])

    def project(self, points_ref_mm: np.ndarray) -> np.ndarray:
        """Detector pixels ``(N, 2)`` = (u column, v row) of ``(N, 3)`` Reference points (NaN behind the source)."""
        p = np.asarray(points_ref_mm, dtype=np.float64).reshape(-1, 3)
        local = apply(np.linalg.inv(self.xray_to_reference), p)
        z = local[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uvw = local @ self.intrinsics().T
            uv = uvw[:, :2] / z[:, None]
        uv[z <= 0] = np.nan
        return uv

    def pixel_rays(self, pixels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rays from the source through detector pixels, in Reference.

        Parameters
        ----------
        pixels : (N, 2) float ndarray, optional
            (u column, v row); every pixel centre of the detector (row-major) when omitted.

        Returns
        -------
        origins : (N, 3) ndarray, mm (all the source position)
        directions : (N, 3) ndarray, unit vectors towards the detector
        """
        if pixels is None:
            rows, cols = self.detector_shape
            vv, uu = np.mgrid[0:rows, 0:cols]
            pixels = np.stack([uu.ravel(), vv.ravel()], axis=1)
        uv = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
        su, sv = self.pixel_spacing_mm
        u0, v0 = self.principal_point_px
        d_local = np.stack([(uv[:, 0] - u0) * su, (uv[:, 1] - v0) * sv,
                            np.full(len(uv), self.source_to_detector_mm)], axis=1)
        d = d_local @ self.xray_to_reference[:3, :3].T
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        return np.repeat(self.source_ref_mm[None], len(uv), axis=0), d

    def detector_points(self, pixels: np.ndarray) -> np.ndarray:
        """Reference positions ``(N, 3)`` of detector pixels ``(N, 2)`` on the detector plane, mm."""
        origins, d = self.pixel_rays(pixels)
        axis = self.xray_to_reference[:3, 2]
        t = self.source_to_detector_mm / (d @ axis)
        return origins + d * t[:, None]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "source_to_detector_mm": float(self.source_to_detector_mm),
            "source_to_isocenter_mm": float(self.source_to_isocenter_mm),
            "detector_rows": int(self.detector_shape[0]),
            "detector_columns": int(self.detector_shape[1]),
            "pixel_spacing_mm": [float(v) for v in self.pixel_spacing_mm],
            "principal_point_px": [float(v) for v in self.principal_point_px],
            "xray_to_reference": [[float(v) for v in row] for row in self.xray_to_reference],
        }

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "<dict>") -> "CArmGeometry":
        required = ("source_to_detector_mm", "source_to_isocenter_mm", "detector_rows", "detector_columns",
                    "pixel_spacing_mm", "xray_to_reference")
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"{source}: missing C-arm geometry keys {missing}")
        rows, cols = int(data["detector_rows"]), int(data["detector_columns"])
        pp = data.get("principal_point_px", [0.5 * (cols - 1), 0.5 * (rows - 1)])
        try:
            return cls(source_to_detector_mm=float(data["source_to_detector_mm"]),
                       source_to_isocenter_mm=float(data["source_to_isocenter_mm"]),
                       detector_shape=(rows, cols), pixel_spacing_mm=np.asarray(data["pixel_spacing_mm"], float),
                       principal_point_px=np.asarray(pp, float),
                       xray_to_reference=np.asarray(data["xray_to_reference"], float),
                       name=str(data.get("name", "")))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from e


def load_carm_geometry(path: str | Path) -> CArmGeometry:
    """Read a C-arm geometry JSON file (keys as :meth:`CArmGeometry.to_dict`; ``_``-prefixed keys are notes)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return CArmGeometry.from_dict(data, source=str(path))


def save_carm_geometry(geometry: CArmGeometry, path: str | Path, *, notes: dict[str, str] | None = None) -> Path:
    """Write ``geometry`` as JSON (``notes`` are stored under ``_``-prefixed keys)."""
    path = Path(path)
    data = {f"_{k}": v for k, v in (notes or {}).items()}
    data.update(geometry.to_dict())
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path
