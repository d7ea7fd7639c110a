"""Cost of the completion uncertainty: the node's surface update for five levels with each uncertainty method.

One process, eager engine over the shipped multimodal weights and their error head (``--device``: cpu, or
cuda when present), ``--threads`` torch threads (the demo launch file gives completion one thread). Inputs:
the five vertebrae of one procedural spine (ray-cast ultrasound and X-ray, ``datasets.pairs``), in mm. Each
repeat runs the update (completion front door + distance-field meshing of every level + carrying the
uncertainty to the vertices) once per method, interleaved: ``off``, ``error_head`` (the default) and
``latent:K`` (K latent draws, ``uncertainty_period_s = 0``: draws every update, as on a GPU). Reported per
method: median and p90 of the whole update and of its ``complete`` / ``uncertainty`` / ``mesh`` steps, and the
ratio of the median update against the first method in the same run. With a period P on a CPU and updates every
U seconds the latent draws run on one update in ceil(P / U): their average cost is about
``1 + (ratio - 1) * U / P``.

usage: python benchmarks/bench_uncertainty.py [--methods off error_head latent:4 latent:8] [--repeats 9]
                                              [--threads 1] [--device cpu]
                                              [--out bench_out/bench_uncertainty.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def five_levels():
    """LevelPoints of the five vertebrae of procedural spine 0 of seed 31, mm, 35 mm apart."""
    from usx_stream.completion.front import LevelPoints
    from usx_stream.datasets.pairs import PairConfig, procedural_pairs

    samples, _ = procedural_pairs(0, seed=31, cfg=PairConfig(mesh_spacing_mm=2.0))
    out = []
    for k, s in enumerate(sorted(samples, key=lambda s: s.level)):
        offset = np.array([0.0, 0.0, -35.0 * k])
        out.append(LevelPoints(s.level, s.partial * 50.0 + offset, s.labelmap * 50.0 + offset, np.eye(3)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["off", "error_head", "latent:4", "latent:8"])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench_out" / "bench_uncertainty.json")
    args = ap.parse_args(argv)
    import torch

    from usx_stream.completion.engine import CompletionEngine
    from usx_stream.node.launch import load_launch
    from usx_stream.node.telemetry import Telemetry
    from usx_stream.node.update import SurfaceUpdater, UpdateInputs

    torch.set_num_threads(args.threads)
    cfg = load_launch(ROOT / "launch" / "demo.toml")
    engine = CompletionEngine.from_default("multimodal", device=args.device, backend="eager")
    levels = five_levels()
    per_level = {lv.level: lv.partial_mm for lv in levels}
    updaters = {}
    for k in args.methods:
        method, _, draws = k.partition(":")
        if method not in ("off", "error_head", "latent") or (method == "latent") != draws.isdigit():
            ap.error(f"--methods: expected off, error_head or latent:K, got {k!r}")
        completion = cfg.with_overrides({"completion.uncertainty": method,
                                         "completion.uncertainty_samples": int(draws or 0),
                                         "completion.uncertainty_period_s": 0.0,
                                         "completion.reuse_change": 0.0}).completion   # complete every update
        u = SurfaceUpdater({"multimodal": engine, "us_only": engine}, bone=cfg.bone, xray_cfg=cfg.xray,
                           surface=cfg.surface, telemetry=Telemetry(), completion=completion)
        u.inputs = lambda *a, **kw: UpdateInputs("multimodal", "xray", per_level, levels, xray_expected=True)
        updaters[k] = u
    walls = {k: [] for k in args.methods}
    for r in range(args.repeats + 1):                    # the first round warms up and is dropped
        for k, u in updaters.items():
            t = time.perf_counter()
            result = u.update(None, beam_direction=np.array([0.0, -1.0, 0.0]), xray=None)
            if r:
                walls[k].append(time.perf_counter() - t)
            assert len(result.surfaces) == 5 and (("uncertainty_mm" in result.surfaces["L3"].point_data) == (k != "off"))
            if r == 0:
                u.telemetry = Telemetry()
    base = float(np.median(walls[args.methods[0]]))
    rows = []
    for k, u in updaters.items():
        stages = {name: round(1000 * float(np.median(u.telemetry.stage(name).samples())), 1)
                  for name in ("complete", "uncertainty", "mesh") if u.telemetry.stage(name).count}
        med = float(np.median(walls[k]))
        rows.append({"method": k, "update_ms_median": round(1000 * med, 1),
                     "update_ms_p90": round(1000 * float(np.quantile(walls[k], 0.9)), 1),
                     "ratio_vs_first": round(med / base, 2), "stages_ms_median": stages})
    report = {"machine": platform.processor() or platform.machine(), "threads": args.threads, "device": str(engine.device),
              "repeats": args.repeats, "levels": 5, "backend": engine.backend, "rows": rows}
    print(f"five levels, eager on {engine.device}, {args.threads} thread(s), {args.repeats} repeats (median update ms, "
          f"ratio vs {args.methods[0]})")
    for row in rows:
        print(f"  {row['method']:<10}  update {row['update_ms_median']:7.1f} ms (p90 {row['update_ms_p90']:7.1f})  "
              f"x{row['ratio_vs_first']:.2f}   steps {row['stages_ms_median']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
