"""Compounding throughput: frames/s for 820x616 frames at 0.5 mm, and hole-filling time.

Runs, in one process and on the same frames, a plain vectorised numpy baseline (``exact`` semantics,
``np.add.at``) beside our kernels (``exact`` numba on 1 and 2 threads, ``plus`` numba, and ``exact``
torch when a GPU is present or --torch-device says so), for NEAREST_NEIGHBOR/MEAN and LINEAR/MEAN, and
prints frames/s (wall-clock median and best, and from process CPU time, which on a shared machine
estimates the one-thread cost on a free core) with the ratio to the baseline and to 30 fps real time.
Then times STICK hole filling of a ~1.6-Mvoxel volume (PLUS's NN_MEAN phantom volume), and
reports, for both semantics, how the volumes compare with the three volumes PLUS made from the same data
(identical geometry, % voxels equal, max |difference|).
Frames and poses come from PLUS's SpinePhantomFreehand sequence when ../shared/data is present
(otherwise a synthetic sweep of the same size). Writes a JSON report.

usage: python benchmarks/bench_compound.py [--frames 42] [--out bench_out/bench_compound.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from usx_stream.compound.config import HoleFillingElement, ReconstructionConfig  # noqa: E402
from usx_stream.compound.holes import fill_holes  # noqa: E402
from usx_stream.compound.reconstructor import Reconstructor, output_geometry  # noqa: E402
from usx_stream.frames import TrackedFrame  # noqa: E402

SHARED = Path(os.environ.get("USX_SHARED_DATA", ROOT.parent / "shared" / "data"))
REAL_TIME_FPS = 30.0


def load_frames():
    """(frames with ImageToReference, source description)."""
    seq_path = SHARED / "plus" / "SpinePhantomFreehand.igs.mha"
    xml = SHARED / "plus" / "PlusDeviceSet_VolumeReconstructionOnly_SpinePhantom_NN_MEAN.xml"
    if seq_path.exists() and xml.exists():
        from usx_stream.compound.config import load_device_set
        from usx_stream.io.sequence import read_sequence

        _, calibration = load_device_set(xml)
        frames = []
        for f in read_sequence(seq_path).frames:
            m = f.transform("ImageToReference", calibration)
            frames.append(TrackedFrame(f.pixels, f.timestamp, {"ImageToReference": m}, index=f.index))
        return frames, f"PLUS SpinePhantomFreehand ({len(frames)} frames, 820x616)"
    rng = np.random.default_rng(0)
    frames = []
    for k in range(21):
        m = np.eye(4)
        m[:3, :3] = np.diag([0.08, 0.08, 0.08])
        m[2, 3] = 0.4 * k
        frames.append(TrackedFrame(rng.integers(0, 256, (616, 820), dtype=np.uint8), float(k),
                                   {"ImageToReference": m}, index=k))
    return frames, "synthetic sweep (21 frames, 820x616)"


def time_paste(frames, config, geometry, n_frames: int, **kw) -> dict:
    """Wall-clock median/best and process CPU seconds per frame over ``n_frames`` pastes (after a
    warm-up frame). On a shared machine the CPU time of a one-thread variant is the better estimate
    of what the kernel costs on a free core."""
    recon = Reconstructor(config, geometry, **kw)
    recon.add(frames[0])  # compile / warm up
    times = []
    cpu0 = time.process_time()
    for k in range(n_frames):
        frame = frames[k % len(frames)]
        t0 = time.perf_counter()
        recon.add(frame)
        times.append(time.perf_counter() - t0)
    cpu = (time.process_time() - cpu0) / n_frames
    times = np.array(times)
    return {"median_s": float(np.median(times)), "best_s": float(times.min()), "cpu_s": cpu,
            "fps": 1.0 / float(np.median(times)), "fps_best": 1.0 / float(times.min()), "fps_cpu": 1.0 / cpu}


def run_paste_benchmarks(frames, n_frames: int, torch_device: str | None) -> list[dict]:
    rows = []
    for interpolation in ("NEAREST_NEIGHBOR", "LINEAR"):
        config = ReconstructionConfig(output_spacing=(0.5, 0.5, 0.5), interpolation=interpolation,
                                      compounding_mode="MEAN")
        geometry = output_geometry(config, frames)
        variants = [("numpy baseline (exact)", dict(semantics="exact", backend="numpy")),
                    ("exact numba 1 thread", dict(semantics="exact", backend="numba")),
                    ("exact numba 2 threads", dict(semantics="exact", backend="numba", threads=2)),
                    ("plus numba", dict(semantics="plus", backend="numba"))]
        if torch_device is not None:
            variants.append((f"exact torch {torch_device}", dict(semantics="exact", backend="torch",
                                                                  device=torch_device)))
        baseline = None
        for name, kw in variants:
            n = max(4, n_frames // 4) if "baseline" in name else n_frames
            result = time_paste(frames, config, geometry, n, **kw)
            baseline = baseline or result["fps"]
            result.update(interpolation=interpolation, compounding="MEAN", variant=name, frames_timed=n,
                          vs_baseline=result["fps"] / baseline, vs_real_time=result["fps"] / REAL_TIME_FPS,
                          voxels=geometry.n_voxels)
            rows.append(result)
            print(f"  {interpolation:16s} {name:24s} {result['fps']:8.1f} fps (best {result['fps_best']:7.1f}, "
                  f"CPU-time {result['fps_cpu']:7.1f})  x{result['vs_baseline']:5.1f} baseline  "
                  f"x{result['vs_real_time']:5.1f} real time", flush=True)
    return rows


def run_hole_benchmark(frames, repeats: int = 5) -> dict:
    config = ReconstructionConfig(output_spacing=(0.5, 0.5, 0.5), interpolation="NEAREST_NEIGHBOR")
    geometry = output_geometry(config, frames)
    recon = Reconstructor(config, geometry)
    for f in frames:
        recon.add(f)
    vol = recon.snapshot(fill_holes=False)
    elements = [HoleFillingElement("STICK", stick_length_limit=9, number_of_sticks_to_use=1)]
    fill_holes(vol.data, vol.weights, elements)  # compile
    times = []
    cpu0 = time.process_time()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fill_holes(vol.data, vol.weights, elements)
        times.append(time.perf_counter() - t0)
    cpu = (time.process_time() - cpu0) / repeats
    result = {"voxels": int(vol.data.size), "holes": int((vol.weights == 0).sum()),
              "median_s": float(np.median(times)), "best_s": float(min(times)), "cpu_s": cpu,
              "ms_per_1.6M_voxels": float(np.median(times)) * 1e3 * 1.6e6 / vol.data.size}
    print(f"  STICK hole filling: {vol.data.size / 1e6:.2f} Mvoxel ({result['holes'] / vol.data.size:.0%} holes): "
          f"{result['median_s'] * 1e3:.1f} ms median, {result['best_s'] * 1e3:.1f} ms best, "
          f"{cpu * 1e3:.1f} ms CPU", flush=True)
    return result


CONFORMANCE_CASES = [
    ("PlusDeviceSet_VolumeReconstructionOnly_SpinePhantom_NN_MEAN.xml", "vtkVolumeReconstructorTestNNMEANvolumeRef.mha",
     "round"),
    ("PlusDeviceSet_VolumeReconstructionOnly_SonixRP_TRUS_D70mm_LN_MEAN.xml",
     "vtkVolumeReconstructorTestLNMEANvolumeRef.mha", "round"),
    ("PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml", "SpinePhantomFreehandReconstructed.mha", "truncate"),
]


def run_conformance() -> list[dict]:
    """Both semantics against PLUS's own volumes: geometry identical?, % voxels equal, max |difference|."""
    plus = SHARED / "plus"
    if not (plus / "SpinePhantomFreehand.igs.mha").exists():
        print("  (no ../shared/data/plus: conformance skipped)")
        return []
    from usx_stream.compound.config import load_device_set
    from usx_stream.io.sequence import read_sequence
    from usx_stream.io.volumes import read_volume

    frames = read_sequence(plus / "SpinePhantomFreehand.igs.mha").frames
    rows = []
    for config_name, reference_name, rounding in CONFORMANCE_CASES:
        config, calibration = load_device_set(plus / config_name)
        ref = read_volume(plus / reference_name)
        for semantics in ("plus", "exact"):
            recon = Reconstructor.from_frames(config, frames, calibration=calibration, extent_rounding=rounding,
                                              semantics=semantics)
            for f in frames:
                recon.add(f)
            vol = recon.snapshot()
            same_geometry = (vol.data.shape == ref.data.shape and np.allclose(vol.origin_mm, ref.origin_mm, atol=5e-4)
                             and np.array_equal(vol.spacing_mm, ref.spacing_mm))
            diff = np.abs(vol.data.astype(np.int64) - ref.data.astype(np.int64)) if same_geometry else None
            row = {"config": config_name, "reference": reference_name, "extent_rounding": rounding,
                   "semantics": semantics, "same_geometry": bool(same_geometry),
                   "equal_fraction": float((diff == 0).mean()) if same_geometry else None,
                   "within_2_fraction": float((diff <= 2).mean()) if same_geometry else None,
                   "max_abs_diff": int(diff.max()) if same_geometry else None,
                   "mean_abs_diff": float(diff.mean()) if same_geometry else None}
            rows.append(row)
            print(f"  {reference_name:45s} {semantics:5s} geometry {'same' if same_geometry else 'DIFFERENT'}"
                  f"  equal {row['equal_fraction']:.4%}  |d|<=2 {row['within_2_fraction']:.4%}"
                  f"  max |d| {row['max_abs_diff']}  mean |d| {row['mean_abs_diff']:.2f}", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=42, help="frames timed per variant (default: %(default)s)")
    parser.add_argument("--json", "--out", dest="out", default=str(ROOT / "bench_out" / "bench_compound.json"),
                        help="write the results here (--json, as the other benchmarks; --out kept)")
    parser.add_argument("--torch-device", default=None,
                        help="also time the torch backend on this device (default: cuda when available)")
    args = parser.parse_args(argv)
    import numba
    import torch

    from usx_stream.hostinfo import describe_host, host_line

    frames, source = load_frames()
    host = describe_host()
    load = host["load_average"]
    print(f"compounding benchmark: {source}; {host_line(host)}; numba {numba.config.NUMBA_NUM_THREADS} "
          f"threads, torch device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    torch_device = args.torch_device or ("cuda" if torch.cuda.is_available() else None)
    rows = run_paste_benchmarks(frames, args.frames, torch_device)
    holes = run_hole_benchmark(frames)
    # other work on a shared machine takes cores from the 2-thread variants: say how loaded it was
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"  load average after the timings {load_end:.1f}")
    conformance = run_conformance()
    report = {"conformance": conformance, "source": source, "cpus": os.cpu_count(), "host": host,
              "numba_threads": numba.config.NUMBA_NUM_THREADS, "load_average_at_start": load,
              "load_average_after_timings": load_end, "platform": platform.platform(),
              "python": platform.python_version(),
              "torch_cuda": torch.cuda.is_available(), "real_time_fps": REAL_TIME_FPS, "paste": rows,
              "hole_filling": holes}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
