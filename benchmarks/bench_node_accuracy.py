"""Accuracy of the whole node on simulated sessions: per spine and level, the multimodal completion against the
US-only fallback completed in the same run, and the published meshes scored like the truth.

Each run is ``usx-stream demo`` (a session simulated from a spine, streamed through the node, every level
completed from the final volume by both models) followed by ``usx-stream score --register none`` of its
recording against the session's truth meshes. What it reports:

* completion body ASSD (mm, the 2048-point figure of ``report.json``) per level, multimodal and US-only, and
  their ratio (the baseline is the US-only model of the same run, on the same volume);
* the published meshes (what the navigation display shows), whole and body, both surfaces sampled evenly;
* per spine, the mean over its seeds.

A spine is a real one (a folder of L?.ply or a label map, as ``usx-stream simulate --spine`` takes), a
shape-model draw ``ssm:FILE[:SEED]``, or ``procedural`` (the simulator's own anatomy: a development figure,
not an accuracy claim). Held-out figures need spines never used for training or selection.

usage: python benchmarks/bench_node_accuracy.py [--spine SPEC ...] [--seeds 7,8] [--frames N]
                                                [--launch launch/demo.toml] [--out bench_out/node_accuracy]
example (the model card's held-out node figures):
  python benchmarks/bench_node_accuracy.py --spine ../shared/data/vertebrae/verse_spines/Verse581 \\
      --spine ../shared/data/vertebrae/verse_spines/Verse631 --seeds 7,8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from usx_stream.errors import InputError  # noqa: E402 (after the path: run from a checkout)

PROCEDURAL = "procedural"


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds: comma-separated integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"--seeds: at least one seed, got {text!r}")
    return seeds


def _mean(values) -> float:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _mm(value) -> str:
    """A figure for the table; '-' where a model completed nothing at that level."""
    return "-" if value is None else f"{value:.2f}"


def run_one(spine: str, seed: int, out: Path, *, launch: str | None, frames: int | None) -> dict:
    """One demo run and the score of its published meshes; per-level figures and their means."""
    from usx_stream.demo.run import run_demo
    from usx_stream.scoring.score import score_recording

    report = run_demo(out, launch=launch, seed=seed, n_frames=frames,
                      spine=None if spine == PROCEDURAL else spine)
    # register none: the recording and the truth share the session's Reference frame
    scored = score_recording(out / "recording", out / "session" / "meshes", register="none").report
    levels = {}
    for level, entry in report["levels"].items():
        mesh = scored["levels"].get(level, {})
        levels[level] = {"multimodal_body_assd_mm": entry.get("multimodal", {}).get("body_assd_mm"),
                         "us_only_body_assd_mm": entry.get("us_only", {}).get("body_assd_mm"),
                         "mesh_assd_mm": mesh.get("assd_mm"), "mesh_body_assd_mm": mesh.get("body_assd_mm")}
    if not levels:
        raise RuntimeError(f"{spine}, seed {seed}: the demo completed no level (see {out / 'report.json'})")
    means = {key: _mean(v[key] for v in levels.values()) for key in next(iter(levels.values()))}
    means["ratio_multimodal_to_us_only"] = means["multimodal_body_assd_mm"] / means["us_only_body_assd_mm"]
    return {"spine": spine, "seed": seed, "levels": levels, "means": means}


def summarise(runs: list[dict]) -> dict:
    """Per spine: the mean of each run mean over its seeds."""
    out = {}
    for spine in dict.fromkeys(r["spine"] for r in runs):
        mine = [r["means"] for r in runs if r["spine"] == spine]
        out[spine] = {key: _mean(m[key] for m in mine) for key in mine[0]} | {"runs": len(mine)}
    return out


def _print(runs: list[dict], spines: dict) -> None:
    print("spine, seed: completion body ASSD multimodal / US-only (ratio); published mesh whole / body (mm)")
    for r in runs:
        m = r["means"]
        per_level = " ".join(f"{lv} {_mm(v['multimodal_body_assd_mm'])}/{_mm(v['us_only_body_assd_mm'])}"
                             for lv, v in r["levels"].items())
        print(f"  {Path(r['spine']).name}, {r['seed']}: {m['multimodal_body_assd_mm']:.2f} / "
              f"{m['us_only_body_assd_mm']:.2f} (x{m['ratio_multimodal_to_us_only']:.2f}); mesh "
              f"{m['mesh_assd_mm']:.2f} / {m['mesh_body_assd_mm']:.2f}   [{per_level}]")
    for spine, m in spines.items():
        print(f"{Path(spine).name} ({m['runs']} runs): multimodal {m['multimodal_body_assd_mm']:.2f} mm, "
              f"US-only {m['us_only_body_assd_mm']:.2f} mm (x{m['ratio_multimodal_to_us_only']:.2f}); mesh whole "
              f"{m['mesh_assd_mm']:.2f}, body {m['mesh_body_assd_mm']:.2f} mm")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spine", action="append", default=None,
                        help=f"spine to simulate from (repeatable; default: {PROCEDURAL})")
    parser.add_argument("--seeds", type=_seeds, default=[7], help="comma-separated session seeds (default: 7)")
    parser.add_argument("--frames", type=int, default=None, help="frames per session (default: the launch file's)")
    parser.add_argument("--launch", default=None, help="launch file (default: launch/demo.toml)")
    parser.add_argument("--out", default="bench_out/node_accuracy", help="output folder (one sub-folder per run)")
    args = parser.parse_args(argv)
    missing = [s for s in args.spine or [] if s != PROCEDURAL and not s.startswith("ssm:") and not Path(s).exists()]
    if missing:   # before the first run: each takes minutes
        parser.error(f"--spine: not found: {', '.join(missing)}")
    out = Path(args.out)
    runs = []
    for i, spine in enumerate(args.spine or [PROCEDURAL]):
        for seed in args.seeds:
            try:
                runs.append(run_one(spine, seed, out / f"{i}_{Path(spine).name}_{seed}", launch=args.launch,
                                    frames=args.frames))
            except InputError as e:
                parser.error(str(e))
    spines = summarise(runs)
    _print(runs, spines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "node_accuracy.json").write_text(json.dumps({"runs": runs, "spines": spines}, indent=1, allow_nan=True))
    print(f"wrote {out / 'node_accuracy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
