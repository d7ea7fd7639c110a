"""``gpu_check.py --end-to-end``: the simulated 30 fps stream through the whole node, on the GPU path and on
the CPU path in one run, with the GPU/CPU ratios.

Both paths stream ``launch/latency_bench.toml`` (the same node and sockets as ``bench_latency.py``, through
``e2e_stream.py``) for the same number of seconds, in this order:

- ``gpu``: ``completion.device = cuda`` (backend and precision ``auto``: TensorRT, else torch.compile +
  CUDA graphs, fp16), compounding with the torch backend on CUDA and the bone points extracted there from
  the device values (``compute.bone_points`` says on how many updates they were);
- ``cpu``: ``completion.device = cpu`` (eager fp32), compounding with the numba kernels.

A path that cannot run here (no CUDA, no scikit-image for the meshing stage) is reported as skipped with the
reason; one that fails is reported with its error, and the other still runs. Without numba the CPU path
compounds with torch on the CPU and says so (``substituted``). Everything is imported lazily.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

PATHS = {
    "gpu": {"completion.device": "cuda", "completion.backend": "auto", "completion.precision": "auto",
            "compound.backend": "torch", "compound.device": "cuda"},
    "cpu": {"completion.device": "cpu", "completion.backend": "auto", "completion.precision": "auto",
            "compound.backend": "numba", "compound.device": "cpu"},
}
RATIO_STAGES = ("end_to_end", "end_to_end_completing")


# Modules the node needs beyond numpy/scipy/torch on both paths (the GPU machines may lack them).
NODE_NEEDS = {"skimage": "scikit-image (marching cubes of the node's meshing stage, "
                         "usx_stream/surface/distance_field.py; with its lazy_loader)"}


def skip_reason(path: str) -> str | None:
    """Why ``path`` cannot run on this machine, or None."""
    for module, what in NODE_NEEDS.items():
        if importlib.util.find_spec(module) is None:
            return f"{what} is not installed"
    if path == "gpu":
        try:
            import torch
        except ImportError as e:
            return f"torch not importable: {e}"
        if not torch.cuda.is_available():
            return f"torch.cuda.is_available() is False (torch {torch.__version__}, CUDA build {torch.version.cuda})"
    return None


def substitution(path: str) -> tuple[dict, str | None]:
    """The launch overrides ``path`` runs with here, and why they differ from ``PATHS`` (None: they don't).

    Without numba (the GPU machines may lack it) the CPU path still runs, compounding with torch on the CPU,
    so its completion and meshing stages can still be compared; its ingest is then ~50x slower and may drop
    frames, which the report says."""
    if path == "cpu" and importlib.util.find_spec("numba") is None:
        return ({**PATHS[path], "compound.backend": "torch", "compound.device": "cpu"},
                "numba is not installed: compounding with torch on the CPU instead of the numba kernels "
                "(~50x slower per frame; ingest may fall behind and drop frames: compare the completion "
                "and mesh stages, not end_to_end)")
    return PATHS[path], None


def transport_crc() -> str:
    """The CRC64 implementation the OpenIGTLink sockets use ('python' is slow: ~15 ms per 100 KB)."""
    from usx_stream.igtl import crc

    return crc.BACKEND


def compute_made(run) -> dict:
    """What the run actually computed with: the resolved launch keys and the objects built from them."""
    node, choice = run.live.node, run.choice
    engines = {}
    for variant, engine in run.live.engines.items():
        engines[variant] = {"backend": engine.backend, "device": str(engine.device), "precision": engine.precision,
                            "describe": engine.describe()}
    recon, updater = node.ingest.reconstructor, node.updater
    on_device = int(node.telemetry.report()["counters"].get("bone_points_on_device", 0))
    bone = {"on_device": node.updates > 0 and on_device == node.updates, "updates_on_device": on_device,
            "updates": node.updates}
    return {"completion_device": choice.completion_device, "precision": choice.precision,
            "compound_backend": choice.compound_backend, "compound_device": choice.compound_device,
            "surface_backend": choice.surface_backend, "surface_device": choice.surface_device,
            "reason": choice.reason, "describe": choice.describe(), "engines": engines,
            "reconstructor": None if recon is None else {"backend": recon.backend, "device": str(recon.device)},
            "mesher": {"backend": updater.mesh_backend, "device": updater.mesh_device},
            "bone_points": bone}


def _brief(stages: dict) -> dict:
    return {k: {"count": v["count"], "p50_ms": v["p50_ms"], "p95_ms": v["p95_ms"]} for k, v in stages.items()}


def run_path(path: str, seconds: float, workdir: Path, *, launch=None, frames: int = 240,
             interval_s: float | None = None) -> dict:
    """One path streamed for ``seconds``: status ``ok`` / ``skipped`` / ``error`` and its figures."""
    from e2e_stream import LAUNCH, load_config, queue_growth, stream, summary

    overrides, substituted = substitution(path)
    out = {"overrides": overrides, "seconds": seconds, **({"substituted": substituted} if substituted else {})}
    why = skip_reason(path)
    if why is not None:
        print(f"  e2e {path}: skipped: {why}", flush=True)
        return {**out, "status": "skipped", "reason": why}
    interval_s = interval_s or max(1.0, min(5.0, seconds / 12.0))
    print(f"  e2e {path}: streaming {seconds:g} s (samples every {interval_s:g} s)", flush=True)
    try:
        cfg = load_config(launch or LAUNCH, overrides)
        run = stream(cfg, duration_s=seconds, workdir=workdir / path, frames=frames, interval_s=interval_s,
                     on_sample=lambda s: print(f"    {path} {s}", flush=True))
        common = summary(run)
    except Exception as e:  # reported; the other path still runs
        print(f"  e2e {path} failed: {type(e).__name__}: {e}", flush=True)
        return {**out, "status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    node_error = run.live.node.error
    result = {**out, "status": "ok" if node_error is None else "error", "compute": compute_made(run),
              "start_s": round(run.start_s, 2), "streamed_s": round(run.stream_s, 2),
              **{k: v for k, v in common.items() if k != "stages"},
              "stages_brief": _brief(common["stages"]), "stages": common["stages"],
              "queue_growth": queue_growth(run.samples), "samples": run.samples}
    if node_error is not None:
        result["error"] = f"node stopped: {type(node_error).__name__}: {node_error}"
    e2e = result["end_to_end_ms"]
    print(f"  e2e {path}: frame->surface p50 {e2e['p50']} ms p95 {e2e['p95']} ms p99 {e2e['p99']} ms, "
          f"{result['frames_compounded']} frames compounded, {result['frames_dropped']} dropped; "
          f"{result['compute']['describe']}; bone points on the "
          f"{'device' if result['compute']['bone_points']['on_device'] else 'host'}", flush=True)
    return result


def _ratio(a, b) -> float | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
        return None
    return a / b


def ratios(gpu: dict, cpu: dict) -> dict:
    """GPU over CPU for end_to_end and end_to_end_completing p50/p95 and every stage's p50 (< 1: GPU faster)."""
    if gpu.get("status") != "ok" or cpu.get("status") != "ok":
        return {"available": False, "reason": f"needs both paths ok (gpu: {gpu.get('status')}, "
                                              f"cpu: {cpu.get('status')})"}
    out = {"available": True, "meaning": "gpu / cpu: below 1 the GPU path is faster"}
    if cpu.get("substituted"):
        out["caveat"] = cpu["substituted"]
    for stage in RATIO_STAGES:
        g, c = gpu["stages"].get(stage, {}), cpu["stages"].get(stage, {})
        out[stage] = {q: _ratio(g.get(f"{q}_ms"), c.get(f"{q}_ms")) for q in ("p50", "p95")}
    out["stage_p50"] = {k: _ratio(v.get("p50_ms"), cpu["stages"].get(k, {}).get("p50_ms"))
                        for k, v in gpu["stages"].items() if k in cpu["stages"]}
    return out


def end_to_end(seconds: float, *, workdir: Path | None = None, launch=None,
               checkpoint: Callable[[dict], None] | None = None) -> dict:
    """Both paths, GPU first; ``checkpoint(section)`` is called after each path (the report is written then,
    so a run cut short by a time limit still leaves what it measured)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    section = {"launch": str(launch or Path(__file__).resolve().parents[1] / "launch" / "latency_bench.toml"),
               "seconds_per_path": seconds, "paths": {}}
    try:
        section["transport_crc64"] = transport_crc()
        if section["transport_crc64"] == "python":
            section["warning"] = ("neither anycrc nor crcmod is installed: the OpenIGTLink CRC64 runs in pure "
                                  "Python (~70 ms per 820x616 frame, each side), so the stream itself limits "
                                  "both paths; compare stages rather than end_to_end")
    except Exception as e:
        section["transport_crc64"] = f"unknown ({type(e).__name__}: {e})"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="usx_e2e_") as tmp:
        for path in ("gpu", "cpu"):
            section["paths"][path] = run_path(path, seconds, Path(workdir or tmp), launch=launch)
            section["wall_s"] = round(time.perf_counter() - t0, 1)
            if checkpoint is not None:
                checkpoint(section)
    section["gpu_over_cpu"] = ratios(section["paths"]["gpu"], section["paths"]["cpu"])
    return section


def failed(section: dict) -> bool:
    """True when a path that could run did not finish ok."""
    return any(p.get("status") == "error" for p in section.get("paths", {}).values())
