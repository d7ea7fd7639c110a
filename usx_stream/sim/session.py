"""A simulated phantom session: tracked B-mode sweep, lateral X-ray and ground truth, for one seed.

``simulate_session(seed)`` draws a spine (:mod:`~usx_stream.sim.anatomy`) or takes a ready one
(``spine=``, e.g. a real spine from :func:`usx_stream.sim.real_spine.real_spine`), plans a freehand sweep
(:mod:`~usx_stream.sim.sweep`), renders the B-mode frames (:mod:`~usx_stream.sim.bmode`) and the lateral
X-ray with its vertebral-body labelmap (:mod:`~usx_stream.sim.xray_projection`). Calibration comes from
``calibration/`` (ImageToProbe from ``sim_probe_deviceset.xml``, the C-arm from ``sim_carm.json``).
Every random draw comes from generators spawned from ``seed`` (one stream each for anatomy, sweep, B-mode
and X-ray), so a seed replays exactly and changing, say, the frame count leaves the anatomy unchanged.

Frames carry ``ProbeToTracker`` and ``ReferenceToTracker`` (as PLUS records them); ``ImageToReference``
is ``inv(ReferenceToTracker) @ ProbeToTracker @ ImageToProbe``. Reference is the patient frame
(x left, y posterior, z cranial; origin at the L3 body centre).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..frames import TrackedFrame, XrayImage
from ..transforms import TransformRepository
from ..xray.geometry import CArmGeometry, load_carm_geometry
from .anatomy import Spine, make_spine
from .bmode import BModeSettings, BModeSimulator, TissueTexture
from .sweep import REFERENCE_TO_TRACKER, ProbeGeometry, plan_sweep, probe_to_reference
from .xray_projection import render_lateral_xray

log = logging.getLogger(__name__)

CALIBRATION_DIR = Path(__file__).resolve().parents[2] / "calibration"
DEFAULT_DEVICE_SET = CALIBRATION_DIR / "sim_probe_deviceset.xml"
DEFAULT_CARM = CALIBRATION_DIR / "sim_carm.json"
IMAGE_SHAPE = (224, 256)  # rows (depth) x columns; matches ClipRectangleSize in the device set


@dataclass
class Session:
    """Everything one simulated session produced.

    Attributes
    ----------
    seed : int
    frames : list[TrackedFrame]
        B-mode frames (uint8, MF) with ProbeToTracker and ReferenceToTracker.
    calibration : TransformRepository
        ImageToProbe (from the device set).
    xray : XrayImage or None
        Lateral X-ray (attenuation line integrals) with its body labelmap and geometry.
    spine : Spine
        Ground-truth anatomy in Reference.
    bone_masks : (N, rows, cols) bool ndarray
        Ground-truth bone-echo pixels per frame.
    header : dict[str, str]
        Extra sequence-file header fields.
    device_set_path, carm_path : Path
        Calibration files used.
    """

    seed: int
    frames: list[TrackedFrame]
    calibration: TransformRepository
    xray: XrayImage | None
    spine: Spine
    bone_masks: np.ndarray
    header: dict[str, str] = field(default_factory=dict)
    device_set_path: Path = DEFAULT_DEVICE_SET
    carm_path: Path = DEFAULT_CARM

    def image_to_reference(self, index: int) -> np.ndarray:
        """``(4, 4)`` ImageToReference of frame ``index``."""
        return self.frames[index].transform("ImageToReference", self.calibration)

    @property
    def carm(self) -> CArmGeometry | None:
        return None if self.xray is None else self.xray.geometry


def load_probe_calibration(device_set: str | Path = DEFAULT_DEVICE_SET) -> TransformRepository:
    """ImageToProbe (and any other CoordinateDefinitions) from a PlusDeviceSet file."""
    from ..io.plus_config import read_device_set

    _require_file(device_set, "device_set")
    repo = read_device_set(device_set).transform_repository()
    if not repo.has("ImageToProbe"):
        raise ValueError(f"{device_set}: no Image -> Probe CoordinateDefinition")
    return repo


def _require_file(path: str | Path, what: str) -> None:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what}: {path} not found (the simulator reads its calibration from "
                                f"calibration/ of the source tree; pass {what}=PATH to use another file)")


def _texture_for(poses: np.ndarray, probe: ProbeGeometry, rng: np.random.Generator) -> TissueTexture:
    """A tissue texture covering every image plane of the sweep (5 mm border)."""
    rows, cols = probe.shape
    corners = np.array([[0, 0, 0, 1], [cols - 1, 0, 0, 1], [0, rows - 1, 0, 1], [cols - 1, rows - 1, 0, 1]]).T
    pts = np.einsum("nij,jk->nik", poses @ probe.image_to_transducer(), corners)[:, :3].transpose(0, 2, 1)
    pts = pts.reshape(-1, 3)
    return TissueTexture(pts.min(axis=0) - 5.0, pts.max(axis=0) + 5.0, rng)


def simulate_session(seed: int, *, n_frames: int = 240, passes: int = 3, variation: float = 1.0,
                     lordosis_deg: float = 40.0, mesh_spacing_mm: float = 1.0, with_xray: bool = True,
                     device_set: str | Path = DEFAULT_DEVICE_SET, carm: str | Path = DEFAULT_CARM,
                     bmode: BModeSettings | None = None, frame_rate_hz: float = 30.0,
                     spine: Spine | None = None, skin_depth_mm: float = 15.0,
                     sweep_extent: tuple[float, float] = (0.0, 1.0)) -> Session:
    """Simulate a tracked freehand sweep and a lateral X-ray of a procedural (or the given) lumbar spine.

    Parameters
    ----------
    seed : int
        Everything is a function of the seed and the other arguments.
    n_frames, passes : int
        Frames in total, spread over ``passes`` cranio-caudal passes (see :func:`plan_sweep`).
    variation, lordosis_deg, mesh_spacing_mm
        Passed to :func:`~usx_stream.sim.anatomy.make_spine`.
    with_xray : bool
        Render the X-ray (a few seconds).
    device_set, carm : path
        Calibration files (defaults in ``calibration/``).
    bmode : BModeSettings, optional
    frame_rate_hz : float
        Acquisition rate; frame timestamps are ``1.79e9 + index / frame_rate_hz`` s.
    spine : Spine, optional
        Use this spine (in Reference; levels may be missing) instead of drawing one; ``variation``,
        ``lordosis_deg`` and ``mesh_spacing_mm`` are then unused. The sweep, B-mode and X-ray streams of
        ``seed`` are the same either way.
    skin_depth_mm : float
        Skin above the spinous tips, mm (how deep the spine lies; see :func:`plan_sweep`).
    sweep_extent : (float, float)
        Part of the cranio-caudal span the sweep covers, fractions from the cranial end (:func:`plan_sweep`).
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    anatomy_rng, sweep_rng, bmode_rng, xray_rng = (np.random.default_rng(s)
                                                   for s in np.random.SeedSequence(int(seed)).spawn(4))
    calibration = load_probe_calibration(device_set)
    probe = ProbeGeometry(calibration.get("ImageToProbe"), IMAGE_SHAPE)
    if spine is None:
        spine = make_spine(anatomy_rng, variation=variation, lordosis_deg=lordosis_deg,
                           spacing_mm=mesh_spacing_mm)
    poses, stamps = plan_sweep(spine, probe, sweep_rng, n_frames=n_frames, passes=passes,
                               frame_rate_hz=frame_rate_hz, skin_depth_mm=skin_depth_mm, extent=sweep_extent)
    simulator = BModeSimulator(spine, probe.shape, probe.spacing_mm[0], _texture_for(poses, probe, bmode_rng),
                               bmode)
    probe_to_ref = probe_to_reference(poses, probe)
    frames, masks = [], np.zeros((len(poses), *probe.shape), dtype=bool)
    image_to_transducer = probe.image_to_transducer()
    for i, (pose, p2r, stamp) in enumerate(zip(poses, probe_to_ref, stamps)):
        pixels, masks[i] = simulator.render(pose @ image_to_transducer, bmode_rng)
        frames.append(TrackedFrame(pixels=pixels, timestamp=float(stamp),
                                   transforms={"ProbeToTracker": REFERENCE_TO_TRACKER @ p2r,
                                               "ReferenceToTracker": REFERENCE_TO_TRACKER.copy()},
                                   transform_status={"ProbeToTracker": True, "ReferenceToTracker": True},
                                   index=i))
    xray = None
    if with_xray:
        _require_file(carm, "carm")
        geometry = load_carm_geometry(carm)
        xray = render_lateral_xray(spine, geometry, xray_rng, timestamp=float(stamps[-1]))
    log.info("simulated seed %d: %d frames, lordosis %.1f deg", seed, len(frames), spine.lordosis_deg)
    header = {"UsxSimulationSeed": str(int(seed))}
    if "source" in spine.metadata:
        header["UsxSpineSource"] = Path(spine.metadata["source"]).name
    return Session(seed=int(seed), frames=frames, calibration=calibration, xray=xray, spine=spine,
                   bone_masks=masks, header=header, device_set_path=Path(device_set), carm_path=Path(carm))


def bone_points_reference(session: Session) -> np.ndarray:
    """Ground-truth bone-echo pixels of every frame mapped to Reference, ``(M, 3)`` mm."""
    out = []
    for frame, mask in zip(session.frames, session.bone_masks):
        jj, ii = np.nonzero(mask)
        if len(ii) == 0:
            continue
        m = frame.transform("ImageToReference", session.calibration)
        pix = np.stack([ii, jj, np.zeros(len(ii)), np.ones(len(ii))])
        out.append((m @ pix)[:3].T)
    return np.concatenate(out) if out else np.zeros((0, 3))


def _xray_volume(image: np.ndarray, spacing_mm: np.ndarray):
    """A 2D detector image as a one-slice Volume (frame ``XrayDetector``: x columns, y rows, mm)."""
    from ..frames import Volume

    return Volume(data=np.ascontiguousarray(image)[None], origin_mm=np.zeros(3),
                  spacing_mm=np.array([spacing_mm[0], spacing_mm[1], 1.0]), frame="XrayDetector")


def _ground_truth(session: Session, files: dict[str, Path], out_dir: Path) -> dict:
    """JSON-ready description of the ground truth (frames, centroids, dimensions, files)."""
    levels = {}
    for level, v in session.spine.vertebrae.items():
        levels[level] = {
            "vertebra_to_reference": v.frame.tolist(),
            "centroid_mm": v.centroid_mm.tolist(),
            "body_centroid_mm": v.body_centroid_mm.tolist(),
            "dimensions_mm": {k: round(float(x), 4) for k, x in vars(v.params).items()},
            "mesh": str(files[f"mesh_{level}"].relative_to(out_dir)),
            "body_mesh": str(files[f"body_mesh_{level}"].relative_to(out_dir)),
        }
    extra = {"spine": dict(session.spine.metadata)} if "source" in session.spine.metadata else {}
    return {
        "seed": session.seed,
        "frames": len(session.frames),
        "image_shape_rows_cols": list(session.frames[0].pixels.shape) if session.frames else [],
        "reference_frame": "patient: x left, y posterior, z cranial (LPS axes), origin at the L3 body centre",
        "lordosis_deg": session.spine.lordosis_deg,
        "levels": levels,
        "files": {k: str(p.relative_to(out_dir)) for k, p in files.items()},
        **extra,
    }


def write_session(session: Session, out_dir: str | Path) -> dict[str, Path]:
    """Write a session to ``out_dir`` (created if needed).

    Files: ``sim_session.igs.mha`` (PLUS sequence), ``sim_probe_deviceset.xml`` and ``sim_carm.json``
    (calibration copies), ``xray.mha`` (float32 attenuation line integrals) and ``xray_labelmap.mha``
    (uint8, 1..5 = L1..L5 bodies), ``meshes/L1.ply`` … and ``meshes/L1_body.ply`` … (Reference, mm),
    ``bone_masks.npz`` (``masks``: (N, rows, cols) bool ground-truth bone-echo pixels) and
    ``ground_truth.json`` (vertebra frames, centroids, dimensions, file list).

    Returns
    -------
    dict[str, Path]
        What was written, by role.
    """
    import json
    import shutil

    from ..io.meshes import write_mesh
    from ..io.sequence import write_sequence
    from ..io.volumes import write_volume

    out = Path(out_dir)
    (out / "meshes").mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    files["sequence"] = write_sequence(out / "sim_session.igs.mha", session.frames, header=session.header)
    files["device_set"] = Path(shutil.copyfile(session.device_set_path, out / "sim_probe_deviceset.xml"))
    if session.xray is not None:
        files["carm"] = Path(shutil.copyfile(session.carm_path, out / "sim_carm.json"))
        spacing = session.xray.pixel_spacing_mm
        files["xray"] = write_volume(out / "xray.mha", _xray_volume(session.xray.pixels, spacing))
        files["xray_labelmap"] = write_volume(out / "xray_labelmap.mha",
                                              _xray_volume(session.xray.labelmap, spacing))
    for level, v in session.spine.vertebrae.items():
        files[f"mesh_{level}"] = write_mesh(out / "meshes" / f"{level}.ply", v.mesh)
        files[f"body_mesh_{level}"] = write_mesh(out / "meshes" / f"{level}_body.ply", v.body_mesh)
    files["bone_masks"] = out / "bone_masks.npz"
    np.savez_compressed(files["bone_masks"], masks=session.bone_masks)
    truth = out / "ground_truth.json"
    truth.write_text(json.dumps(_ground_truth(session, files, out), indent=2) + "\n", encoding="utf-8")
    files["ground_truth"] = truth
    log.info("wrote session seed %d to %s (%d files)", session.seed, out, len(files))
    return files


def _read_truth(out: Path) -> dict:
    """``ground_truth.json`` of a session folder, checked for what :func:`load_session` reads from it."""
    import json

    from ..errors import InputError

    path = out / "ground_truth.json"
    if not path.is_file():
        raise InputError(f"--session {out}: no ground_truth.json (not a folder written by usx-stream simulate)")
    try:
        truth = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"--session {out}: ground_truth.json is not valid JSON ({e})") from None
    if not isinstance(truth, dict) or not isinstance(truth.get("levels"), dict):
        raise InputError(f"--session {out}: ground_truth.json has no 'levels' object (not written by usx-stream "
                         "simulate)")
    for level, entry in truth["levels"].items():
        missing = [k for k in ("mesh", "body_mesh", "centroid_mm", "vertebra_to_reference") if k not in entry]
        if missing:
            raise InputError(f"--session {out}: ground_truth.json levels.{level} lacks {', '.join(missing)}")
    return truth


def load_session(folder: str | Path, *, with_frames: bool = True) -> Session:
    """Read a session folder written by :func:`write_session` (procedural or real spine).

    Parameters
    ----------
    folder : str or Path
    with_frames : bool, keyword-only
        Read the B-mode frames too (the whole sequence file).

    Returns
    -------
    Session
        ``frames`` (empty without ``with_frames``), ``calibration``, ``xray`` (None when the folder has no
        X-ray), ``spine`` (the ground truth: per level ``mesh`` and ``body_mesh`` in Reference, ``frame``
        VertebraToReference and ``centroid_mm``; ``field``, ``body_field`` and ``params`` are None: the
        folder holds no fields), ``bone_masks`` ((0, rows, cols) when absent).

    Raises
    ------
    InputError
        A file the session needs is missing or unreadable (the message names it).
    """
    from ..errors import InputError
    from ..frames import XrayImage
    from ..io.meshes import read_mesh
    from ..io.sequence import read_sequence
    from ..io.volumes import read_volume
    from ..xray.cache import validate_labelmap
    from .anatomy import Vertebra

    out = Path(folder)
    truth = _read_truth(out)
    files = {k: out / v for k, v in truth.get("files", {}).items()}
    for role in ("sequence", "device_set"):
        if role not in files or not files[role].is_file():
            raise InputError(f"--session {out}: {role} file missing ({files.get(role, role)})")
    calibration = load_probe_calibration(files["device_set"])
    frames = read_sequence(files["sequence"]).frames if with_frames else []
    xray = None
    if "xray" in files and "carm" in files:
        geometry = load_carm_geometry(files["carm"])
        image, labelmap = read_volume(files["xray"]), read_volume(files["xray_labelmap"])
        try:
            labels = validate_labelmap(labelmap.data[0])
        except ValueError as e:   # e.g. a label map of another label set (VerSe 20..24)
            raise InputError(f"--session {out}: {files['xray_labelmap'].name}: {e}") from None
        xray = XrayImage(pixels=image.data[0].astype(np.float32), labelmap=labels,
                         pixel_spacing_mm=np.asarray(image.spacing_mm[:2], dtype=np.float64),
                         timestamp=frames[-1].timestamp if frames else 0.0, geometry=geometry)
    vertebrae = {}
    for level, entry in truth["levels"].items():
        vertebrae[level] = Vertebra(level=level, mesh=read_mesh(out / entry["mesh"], frame="Reference"),
                                    body_mesh=read_mesh(out / entry["body_mesh"], frame="Reference"),
                                    centroid_mm=np.asarray(entry["centroid_mm"], dtype=np.float64),
                                    frame=np.asarray(entry["vertebra_to_reference"], dtype=np.float64),
                                    field=None, body_field=None, params=None)
    spine = Spine(vertebrae=vertebrae, lordosis_deg=float(truth.get("lordosis_deg", float("nan"))),
                  metadata={k: str(v) for k, v in truth.get("spine", {}).items()})
    rows_cols = tuple(truth.get("image_shape_rows_cols") or IMAGE_SHAPE)
    masks = np.zeros((0, *rows_cols), dtype=bool)
    if "bone_masks" in files and files["bone_masks"].is_file():
        with np.load(files["bone_masks"]) as z:
            masks = z["masks"]
    return Session(seed=int(truth.get("seed", 0)), frames=frames, calibration=calibration, xray=xray,
                   spine=spine, bone_masks=masks, header={}, device_set_path=files["device_set"],
                   carm_path=files.get("carm", DEFAULT_CARM))
