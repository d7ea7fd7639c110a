"""Volumes written the way ITK-based tools (3D Slicer, scanners' DICOM) write them, for reader tests."""

from __future__ import annotations

import numpy as np


def itk_image(voxels: np.ndarray, ijk_to_lps: np.ndarray):
    """A SimpleITK image of ``voxels`` (I, J, K) placed by ``ijk_to_lps`` (any rotation; ITK speaks LPS)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.asarray(voxels).transpose(2, 1, 0))
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((ijk_to_lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(np.asarray(ijk_to_lps, dtype=float)[:3, 3].tolist())
    return image


def write_itk(path, voxels: np.ndarray, ijk_to_lps: np.ndarray) -> None:
    """``voxels`` to ``path`` (.nrrd, .mha, .nii.gz: by suffix), compressed."""
    import SimpleITK as sitk

    sitk.WriteImage(itk_image(voxels, ijk_to_lps), str(path), useCompression=True)
