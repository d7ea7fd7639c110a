"""One-call GPU check of the completion engine (and GPU compounding), written to one JSON report.

Needs only torch + numpy (+ scipy): it runs on GPU machines with their own torch stack. It

1. builds every completion backend that can run here (tensorrt, compiled = torch.compile + CUDA graphs,
   eager fp32) through ``CompletionEngine``, recording build time and why a backend is missing;
2. checks each against eager fp32 on the same five vertebrae (mean / max point error, unit and mm);
3. times 1 and 5 vertebrae per call: p50 / p95 with CUDA events after warm-up, and the speed-up of each
   backend over eager in the same run;
4. times GPU compounding of 820x616 frames (exact-semantics torch channel) when ``usx_stream.compound``
   has its torch backend, frames/s for NEAREST_NEIGHBOR and LINEAR at 0.5 mm.

5. with ``--end-to-end``, streams the simulated 30 fps session through the whole node (``bench_latency.py``'s
   path) for ``--e2e-seconds`` on the GPU path (completion on CUDA, torch compounding) and then on the CPU
   path (eager fp32, numba compounding), and reports frame->surface p50/p95/p99, the stage table, frames
   compounded/dropped, queue growth, the compute choices made and the GPU/CPU ratios (``gpu_e2e.py``): an
   ``end_to_end`` section added to the same report, which is rewritten after each path.

Without CUDA it runs a reduced version on the CPU (eager only, fewer repeats) and still writes the report;
the end-to-end GPU path is then reported as skipped, with the reason, and the CPU path still runs.
The model is the shipped multimodal checkpoint when present, else the small configuration with seeded
random weights (timings do not depend on the weights; the report says which).

usage: python benchmarks/gpu_check.py [--out bench_out/gpu_check.json] [--config small|paper]
                                      [--repeats 200] [--frames 120]
                                      [--end-to-end [--e2e-seconds 60] [--e2e-only]]

One-call GPU check (engines, compounding, then the whole node on the GPU and the CPU path; allow about
2 x --e2e-seconds plus the engine builds, a few minutes; the report is rewritten after each e2e path):
    python benchmarks/gpu_check.py --end-to-end --e2e-seconds 60 --out $OUT/gpu_check.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from usx_stream.completion import checkpoint  # noqa: E402
from usx_stream.completion.engine import CompletionEngine  # noqa: E402
from usx_stream.completion.nets import ModelConfig, build_model  # noqa: E402
from usx_stream.completion.normalize import SCALE_MM  # noqa: E402


def environment() -> dict:
    cuda = torch.cuda.is_available()
    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "cuda_available": cuda, "cuda": torch.version.cuda, "platform": platform.platform(),
           "triton": importlib.util.find_spec("triton") is not None,
           "torch_tensorrt": importlib.util.find_spec("torch_tensorrt") is not None}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}")
    return env


def load_model(config: str):
    if config == "small" and checkpoint.default_path("multimodal").is_file():
        model, cfg, extra = checkpoint.load_default("multimodal")
        return model, cfg, f"shipped checkpoint {checkpoint.default_path('multimodal').name}"
    cfg = ModelConfig.paper() if config == "paper" else ModelConfig.small()
    torch.manual_seed(0)
    return build_model(cfg).eval(), cfg, f"{config} configuration, seeded random weights (no checkpoint)"


def inputs(cfg: ModelConfig, batch: int, device: torch.device, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(batch, cfg.num_partial, 3)] + ([(batch, cfg.num_labelmap, 3)] if cfg.multimodal else [])
    return [(torch.rand(s, generator=gen) * 2 - 1).to(device) for s in shapes]


def build_engines(model, device: torch.device, args) -> tuple[dict, dict]:
    engines, report = {}, {}
    low = args.precision if device.type == "cuda" else "fp32"  # (the CPU path runs fp32 only)
    wanted = [("tensorrt", low), ("compiled", low), ("eager", "fp32")]
    for backend, precision in wanted:
        t0 = time.perf_counter()
        try:
            engine = CompletionEngine(model, backend=backend, device=device, precision=precision,
                                      cache_dir=args.cache_dir)
        except (RuntimeError, ValueError, ImportError) as e:
            report[backend] = {"available": False, "reason": str(e)}
            print(f"  {backend:9s} not available: {e}", flush=True)
            continue
        engines[backend] = engine
        report[backend] = {"available": True, "precision": precision, "build_and_warmup_s":
                           round(time.perf_counter() - t0, 2), "description": engine.describe()}
        print(f"  {backend:9s} ready in {report[backend]['build_and_warmup_s']} s: {engine.describe()}", flush=True)
    return engines, report


def equivalence(engines: dict, cfg: ModelConfig, device: torch.device) -> dict:
    x = inputs(cfg, 5, device, seed=7)
    reference = engines["eager"].run_device(*x).float()
    out = {}
    for name, engine in engines.items():
        err = (engine.run_device(*x).float() - reference).norm(dim=-1)
        out[name] = {"mean_unit": float(err.mean()), "max_unit": float(err.max()),
                     "mean_mm": float(err.mean()) * SCALE_MM, "max_mm": float(err.max()) * SCALE_MM,
                     "tolerance_mean_unit": 1e-2, "within_tolerance": bool(err.mean() < 1e-2)}
    return out


def time_calls(engine, x: list[torch.Tensor], repeats: int) -> list[float]:
    """Milliseconds per call: CUDA events on the GPU, perf_counter on the CPU."""
    times = []
    cuda = x[0].is_cuda
    for _ in range(repeats):
        if cuda:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            engine.run_device(*x)
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            t0 = time.perf_counter()
            engine.run_device(*x)
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def timings(engines: dict, cfg: ModelConfig, device: torch.device, repeats: int) -> dict:
    out = {}
    for batch in (1, 5):
        x = inputs(cfg, batch, device)
        rows = {}
        for name, engine in engines.items():
            for _ in range(3):  # warm-up at this exact shape
                engine.run_device(*x)
            t = np.array(time_calls(engine, x, repeats))
            rows[name] = {"p50_ms": float(np.percentile(t, 50)), "p95_ms": float(np.percentile(t, 95)),
                          "mean_ms": float(t.mean()), "calls": len(t)}
        for name, row in rows.items():
            row["speedup_vs_eager_p50"] = rows["eager"]["p50_ms"] / row["p50_ms"]
            print(f"  {batch} vertebra{'e' if batch > 1 else ''}: {name:9s} p50 {row['p50_ms']:8.2f} ms  "
                  f"p95 {row['p95_ms']:8.2f} ms  x{row['speedup_vs_eager_p50']:.2f} vs eager", flush=True)
        out[f"batch_{batch}"] = rows
    return out


class _Layout:
    """Every pixel of a frame, in the form the torch compounding channel reads."""

    def __init__(self, height: int, width: int, device: torch.device) -> None:
        jj, ii = np.mgrid[0:height, 0:width]
        self.jj, self.ii = jj.ravel().astype(np.int64), ii.ravel().astype(np.int64)
        self.pixel_index = (self.jj * width + self.ii).astype(np.int64)


def compounding(device: torch.device, n_frames: int) -> dict:
    """Frames/s of the exact-semantics torch compounding channel for a synthetic 820x616 sweep at 0.5 mm."""
    try:
        from usx_stream.compound.torch_backend import TorchExactChannel
    except ImportError as e:
        return {"available": False, "reason": f"usx_stream.compound torch backend not importable: {e}"}
    height, width, pixel_mm, spacing = 616, 820, 0.1, 0.5
    dims = (int(width * pixel_mm / spacing) + 2, int(n_frames * 0.4 / spacing) + 2,
            int(height * pixel_mm / spacing) + 2)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (height, width), dtype=np.uint8) for _ in range(8)]
    layout = _Layout(height, width, device)
    out = {"available": True, "frame": [height, width], "spacing_mm": spacing, "voxels": int(np.prod(dims)),
           "device": str(device)}
    for interpolation in ("NEAREST_NEIGHBOR", "LINEAR"):
        channel = TorchExactChannel(dims[::-1], np.uint8, interpolation=interpolation, mode="MEAN",
                                    pixel_rejection_threshold=None, device=device)
        times = []
        for k in range(n_frames + 1):
            m = np.array([[pixel_mm / spacing, 0, 0, 1.0], [0, 0, 0, 1.0 + k * 0.4 / spacing],
                          [0, pixel_mm / spacing, 0, 1.0], [0, 0, 0, 1]])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            channel.paste(frames[k % len(frames)], layout, m, k)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if k:  # the first frame uploads the pixel layout
                times.append(time.perf_counter() - t0)
        t = np.array(times)
        out[interpolation] = {"fps_median": float(1.0 / np.median(t)), "ms_p50": float(np.median(t) * 1e3),
                              "ms_p95": float(np.percentile(t, 95) * 1e3), "frames": len(t)}
        print(f"  compounding {interpolation:16s} {out[interpolation]['fps_median']:9.1f} frames/s", flush=True)
    return out


def _write(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))


def _end_to_end(report: dict, args) -> bool:
    """The ``end_to_end`` section (gpu_e2e.py); True when it ran without a failing path."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import gpu_e2e

        def checkpoint(section):
            report["end_to_end"] = section
            _write(report, args.out)

        report["end_to_end"] = gpu_e2e.end_to_end(args.e2e_seconds, checkpoint=checkpoint)
        return not gpu_e2e.failed(report["end_to_end"])
    except Exception as e:  # reported like any other section
        report["end_to_end"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        print(f"  end_to_end failed: {e}", flush=True)
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "gpu_check.json")
    parser.add_argument("--config", choices=("small", "paper"), default="small")
    parser.add_argument("--precision", choices=("fp16", "bf16"), default="fp16")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per backend and batch (GPU)")
    parser.add_argument("--frames", type=int, default=120, help="compounded frames per interpolation (GPU)")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".engine_cache")
    parser.add_argument("--end-to-end", action="store_true",
                        help="also stream the whole node on the GPU path and the CPU path (report section end_to_end)")
    parser.add_argument("--e2e-seconds", type=float, default=60.0, help="streaming seconds per end-to-end path")
    parser.add_argument("--e2e-only", action="store_true", help="only the end-to-end section (implies --end-to-end)")
    args = parser.parse_args(argv)
    args.end_to_end = args.end_to_end or args.e2e_only
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reduced = device.type == "cpu"
    report = {"mode": "reduced (no CUDA: eager on CPU only)" if reduced else "full", "environment": environment()}
    print(f"gpu_check on {device} ({report['mode']})", flush=True)
    model, cfg, source = load_model(args.config)
    report["model"] = {"source": source, "config": cfg.to_dict(),
                       "parameters": sum(p.numel() for p in model.parameters())}
    sections = [] if args.e2e_only else [("backends", None), ("equivalence", None), ("timing", None),
                                         ("compounding", None)]
    engines = {}
    for name, _ in sections:
        try:
            if name == "backends":
                engines, report[name] = build_engines(model, device, args)
            elif name == "equivalence":
                report[name] = equivalence(engines, cfg, device)
            elif name == "timing":
                report[name] = timings(engines, cfg, device, min(args.repeats, 5) if reduced else args.repeats)
            else:
                report[name] = compounding(device, min(args.frames, 3) if reduced else args.frames)
        except Exception as e:  # a failing section is reported, and the others still run
            report[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            print(f"  {name} failed: {e}", flush=True)
    e2e_ok = _end_to_end(report, args) if args.end_to_end else True
    if device.type == "cuda":
        report["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    _write(report, args.out)
    print(f"report: {args.out}", flush=True)
    return 0 if e2e_ok and all("error" not in report.get(n, {}) for n, _ in sections) else 1


if __name__ == "__main__":
    sys.exit(main())
