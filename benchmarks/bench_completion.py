"""CPU completion: inference time and peak memory for one and for five vertebrae, against the paper's full
configuration in the same run.

Each measurement runs in its own child process (so peaks do not mix): the child builds the model, runs one
warm-up call, then times ``--repeats`` calls of ``CompletionNet`` in eval mode (posterior mean) on seeded
inputs, and reports the median / best wall time and the peak resident memory (``ru_maxrss``), both for the
whole process and above what it held before the first call. The baseline is the paper configuration
(4096 partial + 4096 labelmap points, RENet over 10,240 points, furthest point sampling) in our pure-torch
implementation; the shipped model is ``usx_stream/completion/weights/multimodal.pt`` when present, else the
small configuration with seeded weights (timing does not depend on the weights). A last row times
``CompletionEngine.complete`` for five vertebrae from millimetre clouds (normalisation and furthest point
resampling of 4000 + 600 points per vertebra included).

usage: python benchmarks/bench_completion.py [--repeats 5] [--paper-batches 1] [--threads 1]
                                             [--out bench_out/bench_completion.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_MS_FIVE, TARGET_MB_FIVE = 250.0, 1024.0


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(config: str, batch: int, repeats: int, threads: int) -> dict:
    """Runs in the child process: build, warm up, time; returns one result row."""
    import torch

    from usx_stream.completion import checkpoint
    from usx_stream.completion.export import example_inputs
    from usx_stream.completion.nets import ModelConfig, build_model

    torch.set_num_threads(threads)
    if config == "shipped" and checkpoint.default_path("multimodal").is_file():
        model, cfg, _ = checkpoint.load_default("multimodal")
        source = "shipped checkpoint"
    else:
        cfg = ModelConfig.paper() if config == "paper" else ModelConfig.small()
        torch.manual_seed(0)
        model, source = build_model(cfg).eval(), f"{'paper' if config == 'paper' else 'small'} config, seeded weights"
    x = example_inputs(cfg, batch)
    before = _rss_mb()
    times, cpu = [], []
    with torch.inference_mode():
        model(*x)
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            model(*x)
            times.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    times.sort()
    cpu.sort()
    # On a shared machine wall time includes waiting for a core; CPU time (all threads) does not.
    return {"config": config, "source": source, "batch": batch, "median_ms": times[len(times) // 2],
            "best_ms": times[0], "median_cpu_ms": cpu[len(cpu) // 2], "repeats": repeats,
            "peak_rss_mb": peak, "peak_above_start_mb": peak - before,
            "parameters": sum(p.numel() for p in model.parameters()), "refined_points": cfg.num_refine,
            "output_points": cfg.num_out, "threads": threads}


def child_engine(batch: int, repeats: int, threads: int) -> dict:
    """Runs in the child: ``CompletionEngine.complete`` on millimetre clouds (resampling included)."""
    import numpy as np
    import torch

    from usx_stream.completion import checkpoint
    from usx_stream.completion.engine import CompletionEngine
    from usx_stream.completion.nets import ModelConfig, build_model

    torch.set_num_threads(threads)
    if checkpoint.default_path("multimodal").is_file():
        model = checkpoint.load_default("multimodal")[0]
    else:
        torch.manual_seed(0)
        model = build_model(ModelConfig.small()).eval()
    engine = CompletionEngine(model, device="cpu", max_batch=5)
    rng = np.random.default_rng(0)
    partials = [rng.normal([0.0, 20.0, 40.0 * k], 15.0, (4000, 3)) for k in range(batch)]
    labelmaps = [rng.normal([0.0, -10.0, 40.0 * k], 10.0, (600, 3)) for k in range(batch)]
    engine.complete(partials, labelmaps)
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        engine.complete(partials, labelmaps)
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    times.sort()
    cpu.sort()
    return {"config": "engine", "source": "engine.complete, 4000 + 600 points in", "batch": batch,
            "median_ms": times[len(times) // 2], "best_ms": times[0], "median_cpu_ms": cpu[len(cpu) // 2],
            "repeats": repeats, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "peak_above_start_mb": 0.0, "threads": threads}


def measure(config: str, batch: int, repeats: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", config, str(batch), str(repeats), str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--paper-batches", type=int, nargs="+", default=[1], help="batch sizes for the baseline")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared machine extra threads spin while waiting for a core)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "bench_completion.json")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        parser.error(f"--repeats and --threads: must be >= 1, got {args.repeats} and {args.threads}")
    if args.child:
        config, batch, repeats, threads = args.child
        run = child_engine if config == "engine" else lambda *a: child(config, *a)
        print(json.dumps(run(int(batch), int(repeats), int(threads))))
        return 0
    rows = []
    plan = [("shipped", 1, args.repeats), ("shipped", 5, args.repeats)]
    plan += [("paper", b, max(1, args.repeats // 2)) for b in args.paper_batches]
    plan += [("engine", 5, args.repeats)]
    for config, batch, repeats in plan:
        row = measure(config, batch, repeats, args.threads)
        rows.append(row)
        label = f"{row['source']}, {batch} vertebra{'e' if batch > 1 else ''}"
        print(f"  {label:48s} median {row['median_ms']:9.1f} ms"
              f"  best {row['best_ms']:9.1f} ms  CPU {row['median_cpu_ms']:9.1f} ms"
              f"  peak {row['peak_rss_mb']:7.0f} MB"
              + (f" (+{row['peak_above_start_mb']:.0f} MB in inference)" if row["config"] != "engine" else ""),
              flush=True)
    paper1 = next(r for r in rows if r["config"] == "paper" and r["batch"] == 1)
    ours1 = next(r for r in rows if r["config"] == "shipped" and r["batch"] == 1)
    ours5 = next(r for r in rows if r["config"] == "shipped" and r["batch"] == 5)
    summary = {"speedup_one_vertebra_vs_paper": paper1["median_ms"] / ours1["median_ms"],
               "cpu_time_ratio_one_vertebra_vs_paper": paper1["median_cpu_ms"] / ours1["median_cpu_ms"],
               "five_vertebrae_ms": ours5["median_ms"], "five_vertebrae_peak_rss_mb": ours5["peak_rss_mb"],
               "targets": {"five_vertebrae_ms": TARGET_MS_FIVE, "five_vertebrae_mb": TARGET_MB_FIVE},
               "load_average": os.getloadavg(), "cpus": os.cpu_count(), "python": platform.python_version()}
    print(f"  one vertebra: x{summary['speedup_one_vertebra_vs_paper']:.1f} faster than the paper configuration "
          f"(x{summary['cpu_time_ratio_one_vertebra_vs_paper']:.1f} in CPU time); five vertebrae "
          f"{ours5['median_ms']:.0f} ms (target {TARGET_MS_FIVE:.0f}), peak {ours5['peak_rss_mb']:.0f} MB "
          f"(target {TARGET_MB_FIVE:.0f}); load average {summary['load_average'][0]:.1f} on {summary['cpus']} CPUs")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
