"""Bone-surface detection: time per frame, accuracy on the simulator, pictures of the PLUS phantom.

- Time per frame of ``BoneDetector.detect`` on the real 820x616 PLUS spine-phantom frames and on
  simulated 224x256 frames (wall median and p95, CPU-time median, over repeated passes), against
  a plain ``scipy.ndimage.gaussian_filter`` (sigma 2 px) of the full frame as the baseline in the
  same run.
- Precision / recall against the simulator's ground-truth bone masks (within 1 mm in depth).
- Pictures (PNG, into --out): detections over the phantom frames, the detected bone points of
  the whole phantom sweep in Reference (ImageToReference from the recording's tracking and the
  device set's ImageToProbe), and the bone points extracted from the compounded bone channel.

    python benchmarks/bench_bone_detect.py --out bench_out/bone
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from usx_stream.bone.detect import BoneDetector, pixel_size_from_image_to_probe  # noqa: E402

PLUS = ROOT.parent / "shared" / "data" / "plus"


def time_per_frame(fn, frames, repeats: int) -> tuple[float, float, float]:
    """Median and p95 wall time and median CPU time of ``fn(frame)`` in ms, over ``repeats`` passes
    of ``frames`` (CPU time is steadier than wall time on a machine shared with other work)."""
    for f in frames[:3]:
        fn(f)
    t, c = [], []
    for _ in range(repeats):
        for f in frames:
            t0, c0 = time.perf_counter(), time.thread_time()
            fn(f)
            t.append((time.perf_counter() - t0) * 1e3)
            c.append((time.thread_time() - c0) * 1e3)
    return float(np.median(t)), float(np.percentile(t, 95)), float(np.median(c))


def simulator_accuracy(detector: BoneDetector, frames, masks, tol_mm: float = 1.0) -> tuple[float, float]:
    correct = total = recalled = truth_total = 0
    for pixels, mask in zip(frames, masks):
        det = detector.detect(pixels)
        jj, ii = np.nonzero(mask)
        truth = np.full(mask.shape[1], np.nan)
        truth[ii] = jj
        cols = np.round(det.pixels_ij[:, 0]).astype(int)
        ok = np.abs(det.pixels_ij[:, 1] - truth[cols]) <= tol_mm / detector.pixel_size_mm
        correct, total = correct + ok.sum(), total + len(ok)
        found = np.zeros(mask.shape[1], bool)
        for c in cols[ok]:          # one detection stands for its whole downsampled block
            found[max(c - detector.downsample // 2, 0): c + detector.downsample // 2 + 1] = True
        recalled, truth_total = recalled + found[ii].sum(), truth_total + len(ii)
    return correct / max(total, 1), recalled / max(truth_total, 1)


def phantom_pictures(out: Path, seq, detector: BoneDetector, calibration) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = np.linspace(0, len(seq.frames) - 1, 6).round().astype(int)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, k in zip(axes.flat, picks):
        frame = seq.frames[k]
        det = detector.detect(frame.pixels)
        ax.imshow(frame.pixels, cmap="gray")
        ax.imshow(np.ma.masked_equal(det.probability, 0), cmap="autumn", alpha=0.35, vmin=0, vmax=1)
        ax.plot(det.pixels_ij[:, 0], det.pixels_ij[:, 1], "c.", ms=3)
        ax.set_title(f"frame {k}: {len(det.confidence)} surface pixels")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "phantom_frames.png", dpi=80)
    plt.close(fig)

    pts, conf = [], []
    for frame in seq.frames:
        det = detector.detect(frame.pixels)
        pts.append(det.points_in(frame.transform("ImageToReference", calibration)))
        conf.append(det.confidence)
    pts, conf = np.concatenate(pts), np.concatenate(conf)
    np.save(out / "phantom_bone_points_reference_mm.npy", pts)
    fig = plt.figure(figsize=(14, 6))
    for n, (elev, azim) in enumerate([(20, -60), (90, -90)]):
        ax = fig.add_subplot(1, 2, n + 1, projection="3d")
        ax.scatter(*pts.T, c=conf, s=3, cmap="viridis")
        ax.view_init(elev=elev, azim=azim)
        ax.set_xlabel("x mm")
        ax.set_ylabel("y mm")
        ax.set_zlabel("z mm")
        ax.set_box_aspect(np.ptp(pts, axis=0))
    fig.suptitle(f"PLUS spine phantom: {len(pts)} bone points from {len(seq.frames)} frames (Reference)")
    fig.savefig(out / "phantom_bone_points.png", dpi=80)
    plt.close(fig)
    print(f"phantom bone points: {len(pts)}, extent (mm) {np.ptp(pts, axis=0).round(1).tolist()}")


def phantom_volume_points(out: Path, seq, detector: BoneDetector, device_set: Path) -> None:
    """Compound the phantom's bone probability as a volume channel (PLUS settings of the device set,
    order-independent mean), extract bone points from it and draw them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from usx_stream.bone.points import extract_bone_points, mean_beam_direction
    from usx_stream.compound.config import load_device_set
    from usx_stream.compound.reconstructor import Reconstructor

    config, calibration = load_device_set(device_set)
    recon = Reconstructor.from_frames(config, seq.frames, calibration=calibration, semantics="exact",
                                      backend="numpy", channels={"bone": "MAXIMUM"})
    t0 = time.perf_counter()
    for frame in seq.frames:
        recon.add(frame, channels={"bone": detector.detect(frame.pixels).probability})
    t_add = time.perf_counter() - t0
    volume = recon.snapshot(fill_holes=False)
    beam = mean_beam_direction([f.transform("ImageToReference", calibration) for f in seq.frames])
    t0 = time.perf_counter()
    pts = extract_bone_points(volume, threshold=0.5, beam_direction=beam, voxel_mm=1.0)
    t_pts = time.perf_counter() - t0
    print(f"phantom volume {volume.data.shape[::-1]} at {volume.spacing_mm[0]} mm: compounding with the bone "
          f"channel {t_add * 1e3 / len(seq.frames):.1f} ms/frame, bone points {len(pts)} in {t_pts * 1e3:.0f} ms")
    np.save(out / "phantom_volume_bone_points_reference_mm.npy", pts)
    fig = plt.figure(figsize=(14, 6))
    for n, (elev, azim) in enumerate([(20, -60), (90, -90)]):
        ax = fig.add_subplot(1, 2, n + 1, projection="3d")
        ax.scatter(*pts.T, c=pts[:, 2], s=4, cmap="viridis")
        ax.view_init(elev=elev, azim=azim)
        ax.set_xlabel("x mm")
        ax.set_ylabel("y mm")
        ax.set_zlabel("z mm")
        ax.set_box_aspect(np.ptp(pts, axis=0) + 1e-6)
    fig.suptitle(f"PLUS spine phantom: {len(pts)} bone points from the compounded bone channel (Reference)")
    fig.savefig(out / "phantom_volume_bone_points.png", dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "bone", help="picture folder")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sim-frames", type=int, default=60)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from usx_stream.io.plus_config import read_device_set
    from usx_stream.io.sequence import read_sequence
    from usx_stream.sim.session import simulate_session

    seq = read_sequence(PLUS / "SpinePhantomFreehand.igs.mha")
    calibration = read_device_set(PLUS / "PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml") \
        .transform_repository()
    px = pixel_size_from_image_to_probe(calibration.get("ImageToProbe"))
    phantom = BoneDetector(pixel_size_mm=px)
    session = simulate_session(3, n_frames=args.sim_frames, with_xray=False)
    sim = BoneDetector(pixel_size_mm=pixel_size_from_image_to_probe(session.calibration.get("ImageToProbe")))
    sim_frames = [f.pixels for f in session.frames]
    phantom_frames = [f.pixels for f in seq.frames]

    print(f"{'frames':<28} {'method':<28} {'ms p50':>7} {'ms p95':>7} {'cpu ms':>7}")
    for label, frames, det in [("PLUS phantom 820x616", phantom_frames, phantom),
                               ("simulated 224x256", sim_frames, sim)]:
        base = time_per_frame(lambda f: ndimage.gaussian_filter(f.astype(np.float32), 2.0), frames, args.repeats)
        ours = time_per_frame(det.detect, frames, args.repeats)
        print(f"{label:<28} {'gaussian_filter (baseline)':<28} {base[0]:>7.2f} {base[1]:>7.2f} {base[2]:>7.2f}")
        print(f"{label:<28} {f'detect (downsample {det.downsample})':<28} {ours[0]:>7.2f} {ours[1]:>7.2f} "
              f"{ours[2]:>7.2f}   {base[2] / ours[2]:.1f}x the baseline's speed (CPU time)")
    p, r = simulator_accuracy(sim, sim_frames, session.bone_masks)
    print(f"simulator (seed 3, {len(sim_frames)} frames): precision {p:.3f}, recall {r:.3f} within 1 mm "
          f"of the ground-truth bone-echo mask")
    phantom_pictures(args.out, seq, phantom, calibration)
    phantom_volume_points(args.out, seq, phantom, PLUS / "PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml")
    print(f"pictures in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
