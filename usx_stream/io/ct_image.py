"""Read a CT (or a label map) as it leaves a scanner or an image tool: NIfTI, NRRD, MetaImage or a DICOM series.

Every reader returns the voxels indexed ``(i, j, k)`` in the file's own order (the IJK that 3D Slicer shows,
so seeds read off its slice views can be passed on as they are) and the affine taking those indices to LPS
patient millimetres, the frame the rest of the project speaks.

NIfTI is read by :func:`usx_stream.sim.ct_labelmaps.read_nifti_labels` and needs nothing more. Everything
else goes through SimpleITK (the ``ct`` extra): ITK already speaks LPS, applies the direction cosines of an
oblique or gantry-tilted acquisition, honours NRRD's ``space`` (a right-anterior-superior file included) and
sorts and rescales a DICOM series into Hounsfield units -- geometry that is easy to get subtly wrong by hand,
and that :mod:`usx_stream.io.volumes` (axis-aligned PLUS volumes only) does not attempt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError

ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


def read_ct_image(path: str | Path, *, what: str = "CT") -> tuple[np.ndarray, np.ndarray]:
    """``(voxels (I, J, K), ijk_to_lps (4, 4))`` of a volume; ``what`` names it in errors (``--ct``, ``--atlas``).

    ``path`` is a ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr``, ``.mha``/``.mhd`` file, or a folder holding one
    DICOM series. Voxel values are returned as float32 (Hounsfield units for a CT; label codes for a label
    map, exact up to 2**24).
    """
    path = Path(path)
    if path.name.endswith((".nii", ".nii.gz")):
        from ..sim.ct_labelmaps import read_nifti_labels

        if not path.is_file():
            raise InputError(f"{what}: {path} does not exist")
        try:
            data, ijk_to_lps = read_nifti_labels(path)
        except InputError as exc:
            raise InputError(f"{what}: {exc}") from exc
        return data.astype(np.float32), ijk_to_lps
    if path.is_dir():
        image = _read_dicom_series(path, what)
    elif path.is_file() and path.name.lower().endswith(ITK_SUFFIXES):
        sitk = _simpleitk(what, path)
        if not path.name.lower().endswith(".dcm"):
            _check_pixel_data(path, what)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputError(f"{what}: {path} could not be read: {str(exc).strip().splitlines()[-1]}") from exc
    elif not path.exists():
        raise InputError(f"{what}: {path} does not exist")
    else:
        raise InputError(f"{what}: {path.name} is not a volume this reads (NIfTI .nii/.nii.gz, NRRD .nrrd/.nhdr, "
                         "MetaImage .mha/.mhd, or a folder holding one DICOM series)")
    return _voxels_and_affine(image, what, path)


def _check_pixel_data(path: Path, what: str) -> None:
    """Raise InputError when a MetaImage/NRRD file's pixel data is truncated or its compressed stream corrupt.

    ITK's MetaImage reader reports a damaged zlib stream only on stderr ("data not read completely") and hands
    back the voxels anyway, garbage included; a truncated file it reports as "No such file or directory". Our
    own reader (:class:`usx_stream.io.metaimage.PixelReader`) inflates the payload once and names what is
    wrong. A header it cannot parse is left to ITK, which reads more variants and says why it cannot."""
    from .metaimage import PixelReader, pixel_layout, read_header

    try:
        layout = pixel_layout(read_header(path))
    except (ValueError, OSError):  # InputError included
        return
    left = int(np.prod(layout.sizes, dtype=np.int64)) * layout.bytes_per_pixel
    try:
        with PixelReader(layout) as reader:
            while left > 0:
                n = min(left, 1 << 24)
                reader.read(n)
                left -= n
            reader.check_end()
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from exc
    except OSError as exc:
        raise InputError(f"{what}: {path} could not be read: {exc}") from exc


def _voxels_and_affine(image, what: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what}: {path} holds a {image.GetDimension()}-D image with "
                         f"{image.GetNumberOfComponentsPerPixel()} components per voxel; a 3-D scalar volume is needed")
    # SimpleITK's array is (k, j, i): the index order reversed.
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * np.array(image.GetSpacing(), dtype=np.float64)
    ijk_to_lps[:3, 3] = image.GetOrigin()
    return np.ascontiguousarray(data), ijk_to_lps


def _read_dicom_series(folder: Path, what: str):
    sitk = _simpleitk(what, folder)
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{what}: the folder {folder} holds no DICOM series")
    if len(series) > 1:
        counts = ", ".join(f"{uid} ({len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))} files)"
                           for uid in series)
        raise InputError(f"{what}: the folder {folder} holds {len(series)} DICOM series ({counts}); "
                         "move the one to read into a folder of its own")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{what}: the DICOM series in {folder} could not be read: "
                         f"{str(exc).strip().splitlines()[-1]}") from exc


def _simpleitk(what: str, path: Path):
    try:
        import SimpleITK as sitk
    except ImportError as exc:
        raise InputError(f"{what}: reading {path.name} (NRRD, MetaImage, DICOM) needs SimpleITK: "
                         "pip install 'usx-stream[ct]' (NIfTI needs nothing more)") from exc
    return sitk
