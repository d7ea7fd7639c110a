"""Does the completion uncertainty mean something? Rank correlation of per-point spread with per-point error.

Held-out inputs only:

* ``node``: simulated node sessions (``datasets.node_sessions.node_pairs``: simulated sweep and X-ray through
  the node's own ingest and update code, the ground truth in the frame the node estimated) from a seed no
  training, validation or test set of the shipped weights used (the model card lists 1, 11, 14 for training,
  9002 and 12 for selection, 9001 and 13 for testing, 7 for the demo);
* ``real``: real vertebra meshes from ``../shared/data/vertebrae`` (VerSe spines, TotalSegmentator, Visible
  Human; never used for training or selection), with simulated ray-cast ultrasound and X-ray
  (``datasets.pairs.mesh_pairs``, inputs in the true vertebra frame).

For each vertebra the shipped multimodal network decodes the mean completion and K latent draws in one batch
(``CompletionNet.mean_and_samples``); the X-ray body fit is applied to the mean as the node does. Per point of
the published completion: uncertainty = spread in mm (``completion.uncertainty``, both correspondences), error
= distance in mm to the ground-truth surface (nearest of 16,384 points sampled uniformly by area on it).
Reported: Spearman rho (scipy.stats.spearmanr) over all points with its p-value (points of one vertebra are
not independent: the p-value is optimistic), the median per-vertebra rho and how many are positive, the
Spearman rho between per-vertebra mean uncertainty and mean error (the figure a surgeon reads: is this level
worse than that one?), and the error by uncertainty decile.

A development figure on ``node``: the sessions are simulated (DESIGN §8).

usage: python benchmarks/uncertainty_check.py [--sessions 8] [--seed 31] [--real-max 30] [--k 8]
                                              [--threads 1] [--out bench_out/uncertainty_check.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GT_POINTS = 16384
USED_SEEDS = {1, 7, 9001, 9002, 11, 12, 13, 14}
REAL_DIRS = ("verse_spines", "totalsegmentator/vertebrae", "visible_human_male_L1-L5")


def node_samples(sessions: int, seed: int) -> list:
    from usx_stream.datasets.node_sessions import node_pairs

    out = []
    for i in range(sessions):
        samples, skipped = node_pairs(i, seed=seed, launch=ROOT / "launch" / "demo.toml", complete_points=GT_POINTS)
        out += samples
        print(f"  session {i}: {len(samples)} vertebrae{'; skipped ' + str(skipped) if skipped else ''}", flush=True)
    return out


def real_samples(data: Path, limit: int, seed: int) -> list:
    from usx_stream.datasets.pairs import PairConfig, mesh_pairs

    files = sorted(p for d in REAL_DIRS for p in (data / d).rglob("*") if p.suffix in (".ply", ".obj", ".stl"))
    out = []
    for path in files[:limit]:
        samples, skipped = mesh_pairs(str(path), seed=seed, cfg=PairConfig(complete_points=GT_POINTS))
        for s in samples:
            s.name = f"{path.parent.name}/{path.name}"
        out += samples
        if skipped:
            print(f"  {path.name}: skipped {skipped}", flush=True)
    return out


def evaluate(model, samples: list, k: int, seed: int) -> list[dict]:
    """Per vertebra: spread (both correspondences) and error per point of the published completion, mm."""
    import torch
    from scipy.spatial import cKDTree

    from usx_stream.completion import ops, uncertainty as unc
    from usx_stream.completion.body_fit import fit_body_to_silhouette
    from usx_stream.completion.normalize import SCALE_MM

    rows = []
    for n, s in enumerate(samples):
        partial = torch.from_numpy(np.ascontiguousarray(s.partial[None], dtype=np.float32))
        labelmap = torch.from_numpy(np.ascontiguousarray(s.labelmap[None], dtype=np.float32))
        eps = unc.latent_draws(k, 1, model.cfg.latent, seed=seed + n)
        with torch.inference_mode(), ops.tree_knn():
            out = model.mean_and_samples(partial, labelmap, eps)
            _, q_std = model._posterior(model.encoder_pcd(partial), labelmap)
        mean, draws = out[:, 0], out[:, 1:]
        spread = {how: unc.point_spread(mean, draws, correspondence=how)[0].numpy() * SCALE_MM
                  for how in ("index", "nearest")}
        fitted, _ = fit_body_to_silhouette(mean[0].numpy(), s.labelmap)
        error = cKDTree(np.asarray(s.complete, np.float64)).query(np.asarray(fitted, np.float64))[0] * SCALE_MM
        rows.append({"name": s.name, "level": s.level, "error_mm": error, "posterior_std": float(q_std.mean()), **{f"spread_{h}": v for h, v in spread.items()}})
    return rows


def summarise(rows: list[dict], key: str) -> dict:
    from scipy.stats import spearmanr

    u = np.concatenate([r[key] for r in rows])
    e = np.concatenate([r["error_mm"] for r in rows])
    rho, p = spearmanr(u, e)
    per = [spearmanr(r[key], r["error_mm"])[0] for r in rows]
    mean_u = [float(r[key].mean()) for r in rows]
    mean_e = [float(r["error_mm"].mean()) for r in rows]
    rho_v, p_v = spearmanr(mean_u, mean_e) if len(rows) > 2 else (float("nan"), float("nan"))
    edges = np.quantile(u, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(edges, u, side="right") - 1, 0, 9)
    deciles = [{"decile": d + 1, "uncertainty_mm": [round(float(edges[d]), 3), round(float(edges[d + 1]), 3)],
                "points": int((which == d).sum()), "error_mean_mm": round(float(e[which == d].mean()), 3),
                "error_median_mm": round(float(np.median(e[which == d])), 3),
                "error_p90_mm": round(float(np.quantile(e[which == d], 0.9)), 3)} for d in range(10)]
    return {"points": int(len(u)), "vertebrae": len(rows), "spearman_rho": float(rho), "p_value": float(p),
            "per_vertebra_rho_median": float(np.median(per)), "per_vertebra_rho_positive": int(np.sum(np.array(per) > 0)),
            "vertebra_mean_rho": float(rho_v), "vertebra_mean_p_value": float(p_v),
            "uncertainty_mean_mm": float(u.mean()),
            "posterior_std_mean": float(np.mean([r["posterior_std"] for r in rows])), "error_mean_mm": float(e.mean()), "deciles": deciles}


def print_summary(name: str, key: str, s: dict) -> None:
    print(f"\n[{name}] {key}: {s['vertebrae']} vertebrae, {s['points']} points; mean uncertainty "
          f"{s['uncertainty_mean_mm']:.2f} mm, mean error {s['error_mean_mm']:.2f} mm; mean posterior std "
          f"{s['posterior_std_mean']:.3f} (the prior's is 1)")
    print(f"  Spearman rho (all points) = {s['spearman_rho']:.3f}, p = {s['p_value']:.2e}")
    print(f"  per vertebra: median rho {s['per_vertebra_rho_median']:.3f}, positive in "
          f"{s['per_vertebra_rho_positive']}/{s['vertebrae']}")
    print(f"  vertebra mean uncertainty vs mean error: rho = {s['vertebra_mean_rho']:.3f}, "
          f"p = {s['vertebra_mean_p_value']:.2e}")
    print("  decile  uncertainty mm     error mean / median / p90 mm")
    for d in s["deciles"]:
        lo, hi = d["uncertainty_mm"]
        print(f"  {d['decile']:>6}  {lo:6.2f} - {hi:6.2f}    {d['error_mean_mm']:5.2f} / {d['error_median_mm']:5.2f} / "
              f"{d['error_p90_mm']:5.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=8, help="held-out simulated node sessions (5 vertebrae each)")
    ap.add_argument("--seed", type=int, default=31, help="session stream seed (must not be a training/selection seed)")
    ap.add_argument("--real-max", type=int, default=30, help="most real meshes (0: none)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "vertebrae")
    ap.add_argument("--k", type=int, default=8, help="latent draws")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench_out" / "uncertainty_check.json")
    args = ap.parse_args(argv)
    if args.seed in USED_SEEDS:
        ap.error(f"--seed {args.seed} made data the shipped weights were trained, selected or tested on")
    import torch

    from usx_stream.completion.checkpoint import load_default

    torch.set_num_threads(args.threads)
    model, _, _ = load_default("multimodal")
    model.eval()
    report = {"k": args.k, "seed": args.seed, "model": "multimodal (shipped)", "gt_points": GT_POINTS, "sets": {}}
    t0 = time.perf_counter()
    sets = {}
    if args.sessions:
        print(f"node sessions, seed {args.seed}:", flush=True)
        sets["node"] = node_samples(args.sessions, args.seed)
    if args.real_max and args.data.is_dir():
        print(f"real vertebrae under {args.data}:", flush=True)
        sets["real"] = real_samples(args.data, args.real_max, args.seed)
    for name, samples in sets.items():
        rows = evaluate(model, samples, args.k, args.seed)
        report["sets"][name] = {key: summarise(rows, key) for key in ("spread_index", "spread_nearest")}
        report["sets"][name]["names"] = [r["name"] for r in rows]
        for key in ("spread_index", "spread_nearest"):
            print_summary(name, key, report["sets"][name][key])
    report["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.out} ({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
