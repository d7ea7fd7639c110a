"""The truth a session is scored against: per-level meshes or a CT label volume, and the body rule.

Two kinds of truth, each in its own frame (the "truth frame": the CT's, unless it is already Reference):

- a folder of meshes, one per level (``L1.ply`` .. ``L5.ply``; PLY, STL or OBJ; a file stem that names
  one level, such as ``verse561_L3.stl``, counts for that level), in mm;
- a CT label volume (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) meshed per label
  with :func:`usx_stream.sim.ct_labelmaps.label_meshes`, in the scan's LPS frame, mm. Two label sets:

  ``verse``             20..24 = L1..L5 (VerSe; its highest label is 28 = T13);
  ``totalsegmentator``  31 = L1, 30 = L2, 29 = L3, 28 = L4, 27 = L5 (TotalSegmentator v2; its maps also
                        hold organs on 1..26 and labels up to 117).

  ``auto`` picks ``totalsegmentator`` when any label above 28 is present (VerSe never uses one), else
  ``verse`` when any of 20..24 is present, else refuses; the choice is reported. The label sets and the
  choice live in :mod:`usx_stream.sim.ct_labelmaps` (the simulator reads the same volumes).

Vertebral body (DESIGN §3, the paper's split): the truth mesh is sampled evenly; its centroid ``c`` is the
mean of the samples. With ``posterior`` the unit direction towards the probe in Reference (the opposite
of the frames' mean beam direction), a point ``p`` (truth or prediction, in Reference) belongs to the body
when ``(p - c) . posterior <= 0`` (at or anterior of the centroid) and to the arch otherwise; prediction
and truth are split by the same plane, the truth's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..frames import Surface
from ..sim.ct_labelmaps import TOTALSEGMENTATOR_LEVELS, VERSE_LEVELS, choose_label_set

log = logging.getLogger(__name__)

__all__ = ["Truth", "load_truth", "choose_label_set", "sample_with_normals", "body_mask",
           "VERSE_LEVELS", "TOTALSEGMENTATOR_LEVELS"]

LABEL_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class Truth:
    """Truth meshes of the levels found, in the truth frame.

    Attributes
    ----------
    meshes : dict[str, Surface]
        By level (``L1``..``L5`` order); vertices in mm, truth frame.
    kind : str
        ``"meshes"`` or ``"labelmap"``.
    frame : str
        Name of the truth frame (``"LPS"`` for a label volume, the meshes' as read otherwise).
    label_set : str or None
        ``"verse"`` or ``"totalsegmentator"`` for a label volume.
    chosen_by : str or None
        ``"auto"`` when the label set was detected, ``"option"`` when given.
    info : dict
        What was found (files or label values per level), JSON-ready.
    """

    meshes: dict[str, Surface]
    kind: str
    frame: str
    label_set: str | None = None
    chosen_by: str | None = None
    info: dict = field(default_factory=dict)

    def describe(self, path: str | Path) -> dict:
        """JSON-ready summary for the report."""
        return {"path": str(path), "kind": self.kind, "frame": self.frame, "labels": self.label_set,
                "labels_chosen_by": self.chosen_by, "levels": list(self.meshes), **self.info}


def load_truth(path: str | Path, *, labels: str = "auto", smooth_voxels: float = 0.7) -> Truth:
    """Read the truth: a folder of per-level meshes or a CT label volume.

    Parameters
    ----------
    path : str or Path
        Folder of meshes, or a label volume file (see the module docstring).
    labels : {"auto", "verse", "totalsegmentator"}, keyword-only
        Label set of a label volume (ignored for meshes).
    smooth_voxels : float, keyword-only
        Gaussian sigma (voxels) of each label mask before meshing.

    Returns
    -------
    Truth

    Raises
    ------
    InputError
        Missing path, unknown format, no level found, or a label set that does not match the volume.
    """
    from ..io.meshes import read_mesh

    path = Path(path)
    if not path.exists():
        raise InputError(f"--truth {path}: not found")
    if path.is_dir():
        from ..io.meshes import check_vertebra_size, level_mesh_files

        files = level_mesh_files(path, what="--truth")
        meshes = {}
        for level, file in files.items():
            try:
                meshes[level] = read_mesh(file, frame="truth")
            except ValueError as e:
                raise InputError(f"--truth {file}: {e}") from e
            if len(meshes[level].triangles) == 0:
                raise InputError(f"--truth {file}: the mesh has no triangle")
            check_vertebra_size(file, meshes[level].vertices_mm, what="--truth")
        return Truth(meshes, "meshes", "truth", info={"files": {lv: p.name for lv, p in files.items()}})
    if not path.name.lower().endswith(LABEL_SUFFIXES):
        raise InputError(f"--truth {path}: expected a folder of meshes or a label volume "
                         f"({', '.join(LABEL_SUFFIXES)})")
    from ..sim.ct_labelmaps import lumbar_label_meshes

    try:
        meshes, info = lumbar_label_meshes(path, labels=labels, smooth_voxels=smooth_voxels)
    except InputError as e:
        raise InputError(f"--truth {e}") from e
    label_set, chosen_by, values = info["label_set"], info["chosen_by"], info["label_values"]
    return Truth(meshes, "labelmap", "LPS", label_set, chosen_by, info={"label_values": values})


def sample_with_normals(surface: Surface, n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points drawn evenly by area on a triangle mesh, with the normal of the triangle each lies on.

    Normals point outwards when the mesh is closed and consistently wound (a mesh whose signed volume is
    negative, i.e. wound inwards, has its normals flipped).

    Parameters
    ----------
    surface : Surface
        ``vertices_mm`` (V, 3), ``triangles`` (T, 3).
    n : int
        Number of points.
    seed : int, keyword-only
        Seed of the draw (the same mesh and seed give the same points).

    Returns
    -------
    points : (n, 3) float64 ndarray
        In the surface's frame, mm.
    normals : (n, 3) float64 ndarray
        Unit normals (zero on degenerate triangles).
    """
    rng = np.random.default_rng(seed)
    v = np.asarray(surface.vertices_mm, dtype=np.float64)
    f = np.asarray(surface.triangles, dtype=np.int64).reshape(-1, 3)
    if len(f) == 0 or n <= 0:
        return np.zeros((0, 3)), np.zeros((0, 3))
    t = v[f]
    cross = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    double_area = np.linalg.norm(cross, axis=1)
    if double_area.sum() == 0:
        return np.zeros((0, 3)), np.zeros((0, 3))
    signed_volume = float(np.einsum("ij,ij->", t[:, 0], cross)) / 6.0
    unit = np.divide(cross, double_area[:, None], out=np.zeros_like(cross), where=double_area[:, None] > 0)
    if signed_volume < 0:
        unit = -unit
    idx = rng.choice(len(f), size=n, p=double_area / double_area.sum())
    s, r2 = np.sqrt(rng.random(n)), rng.random(n)
    a, b, c = 1 - s, s * (1 - r2), s * r2
    points = a[:, None] * t[idx, 0] + b[:, None] * t[idx, 1] + c[:, None] * t[idx, 2]
    return points, unit[idx]


def body_mask(points: np.ndarray, centroid: np.ndarray, posterior: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: the points at or anterior of the plane through ``centroid`` normal to ``posterior``.

    Parameters
    ----------
    points : (N, 3) array_like
        Reference, mm.
    centroid : (3,) array_like
        The truth vertebra's centroid (mean of its even samples), Reference, mm.
    posterior : (3,) array_like
        Direction towards the probe in Reference (any length).
    """
    post = np.asarray(posterior, dtype=np.float64).reshape(3)
    post = post / np.linalg.norm(post)
    return (np.asarray(points, dtype=np.float64) - np.asarray(centroid, dtype=np.float64).reshape(3)) @ post <= 0
