"""Meshing a completed vertebra cloud: accuracy against real vertebra meshes, and time.

For every real vertebra surface in ../shared/data/vertebrae (5 VerSe L1, the mean L2-L5 of a shape
model, Visible Human L1-L5), sample 4096 points uniformly on it (optionally with Gaussian noise, as
a completion network's output has), mesh them with each method and compare the result with the
original mesh: ASSD and HD95 from 20,000 area-uniform samples of each surface to the exact nearest
point on the other (open3d ray-casting scene), and whether the result is watertight (every edge in
exactly two oppositely oriented triangles). The template fit deforms a same-level mesh of another
person (decimated to the budget beforehand; quadric decimation can open some of those templates).
open3d Poisson at depth 8 is the baseline, run in the same process; the last column is its median
wall time over the method's. "cpu ms" is the median process CPU time (all threads): on a shared
machine it is steadier than wall time.

    python benchmarks/bench_meshing.py                     # all 14 meshes, clean clouds
    python benchmarks/bench_meshing.py --noise-mm 0.5      # noisy clouds
    python benchmarks/bench_meshing.py --quick             # 3 meshes (no template-fit row)
    python benchmarks/bench_meshing.py --only template     # the baseline and the template fit
    python benchmarks/bench_meshing.py --only "torch,(default)"   # torch mesher (CPU, and CUDA when present)

The torch rows run the pure-torch mesher (marching cubes, its case table derived in code) on the CPU,
and on CUDA when present; on a CPU shared with other work, ``OMP_NUM_THREADS=1`` gives steadier torch
times.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from usx_stream._deps import import_open3d  # noqa: E402
from usx_stream.frames import Surface  # noqa: E402
from usx_stream.surface.mesh import is_watertight, mesh_points, sample_surface  # noqa: E402
from usx_stream.surface.template_fit import fit_template  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "vertebrae"

# (label, mesh_points keyword arguments); the triangle budget is added from the command line.
METHODS = [
    ("poisson d8 (baseline)", dict(method="poisson", poisson_depth=8)),
    ("poisson d8, no decimation", dict(method="poisson", poisson_depth=8, triangle_budget=10**7)),
    ("poisson d7", dict(method="poisson", poisson_depth=7)),
    ("poisson d6", dict(method="poisson", poisson_depth=6)),
    ("poisson d5", dict(method="poisson", poisson_depth=5)),
    ("ball pivoting", dict(method="ball_pivoting")),
    ("distance field 1.0 mm", dict(method="distance_field", grid_mm=1.0, triangle_budget=10**7)),
    ("distance field 2.0 mm", dict(method="distance_field", grid_mm=2.0, triangle_budget=10**7)),
    ("distance field 2.5 mm", dict(method="distance_field", grid_mm=2.5, triangle_budget=10**7)),
    ("distance field 2.5, no proj.", dict(method="distance_field", grid_mm=2.5, project_k=0,
                                          triangle_budget=10**7)),
    ("distance field 3.0 mm", dict(method="distance_field", grid_mm=3.0, triangle_budget=10**7)),
    ("distance field 3.5 mm", dict(method="distance_field", grid_mm=3.5, triangle_budget=10**7)),
    ("distance field (default)", dict(method="distance_field")),
    ("distance field torch 2.5 mm", dict(method="distance_field", backend="torch", triangle_budget=10**7)),
    ("distance field torch 3.5 mm", dict(method="distance_field", backend="torch", grid_mm=3.5,
                                         triangle_budget=10**7)),
    ("distance field torch (default grid)", dict(method="distance_field", backend="torch")),
    ("template fit (other subject)", dict(method="template")),
]


def cuda_methods() -> list[tuple[str, dict]]:
    """The torch mesher on the GPU, when there is one (the time includes the copy back to numpy)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [("distance field torch cuda 2.5 mm", dict(method="distance_field", backend="torch", device="cuda",
                                                      triangle_budget=10**7)),
            ("distance field torch cuda (default grid)", dict(method="distance_field", backend="torch",
                                                              device="cuda"))]


def template_index(names: list[str], i: int) -> int:
    """A same-level mesh of another person: VerSe L1 <- Visible Human L1, shape-model mean L2-L5 <-
    Visible Human L2-L5, Visible Human Lk <- shape-model mean Lk (L1 <- VerSe subject 010)."""
    n = names[i]
    if n.startswith("sub-verse"):
        return names.index("L1_Schrumpfverpacken")
    if n.startswith("mean_L"):
        return names.index(f"L{n[-1]}_Schrumpfverpacken")
    level = n[1]
    return names.index("sub-verse010_segment_20" if level == "1" else f"mean_L{level}")


def decimated(o3d, s: Surface, budget: int) -> Surface:
    """A template within the triangle budget (prepared once, offline, so not timed)."""
    m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(s.vertices_mm), o3d.utility.Vector3iVector(s.triangles))
    m = m.simplify_quadric_decimation(budget)
    m.remove_unreferenced_vertices()
    return Surface(np.asarray(m.vertices), np.asarray(m.triangles))


def load_meshes(quick: bool) -> list[tuple[str, Surface]]:
    o3d = import_open3d()
    files = sorted(DATA.glob("verse_L1/*.ply")) + sorted(DATA.glob("clouthier_mean_L2-L5/*.ply")) + \
        sorted(DATA.glob("visible_human_male_L1-L5/*.obj"))
    if quick:
        files = files[:1] + files[5:6] + files[-1:]
    out = []
    for f in files:
        m = o3d.io.read_triangle_mesh(str(f))
        scale = 1000.0 if "visible_human" in f.parts[-2] else 1.0    # those surfaces are in metres
        out.append((f.stem, Surface(np.asarray(m.vertices) * scale, np.asarray(m.triangles))))
    return out


def surface_distances(o3d, a: Surface, b: Surface, n: int = 20000) -> tuple[float, float]:
    """ASSD and HD95 (mm) between two meshes, sampled points to exact nearest surface points."""
    def directed(src: Surface, dst: Surface) -> np.ndarray:
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(np.asarray(dst.vertices_mm, np.float32), np.asarray(dst.triangles, np.uint32))
        pts = sample_surface(src, n, seed=1).astype(np.float32)
        return scene.compute_distance(o3d.core.Tensor(pts)).numpy()
    if len(a.triangles) == 0:
        return float("inf"), float("inf")
    d1, d2 = directed(a, b), directed(b, a)
    return float(np.concatenate([d1, d2]).mean()), float(max(np.percentile(d1, 95), np.percentile(d2, 95)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=4096, help="points per cloud (default 4096)")
    parser.add_argument("--noise-mm", type=float, default=0.0, help="Gaussian noise sigma per axis, mm")
    parser.add_argument("--budget", type=int, default=10000, help="triangle budget (default 10000)")
    parser.add_argument("--quick", action="store_true", help="3 meshes instead of all")
    parser.add_argument("--only", default="", help="comma-separated substrings of method labels to run")
    args = parser.parse_args(argv)
    if not DATA.exists():
        print(f"no reference meshes at {DATA}", file=sys.stderr)
        return 2
    o3d = import_open3d()
    meshes = load_meshes(args.quick)
    rng = np.random.default_rng(0)
    clouds = [sample_surface(gt, args.points, seed=rng) + rng.normal(0, args.noise_mm, (args.points, 3))
              if args.noise_mm > 0 else sample_surface(gt, args.points, seed=rng) for _, gt in meshes]
    methods = [m for m in METHODS + cuda_methods() if not args.only or m is METHODS[0]
               or any(s in m[0] for s in args.only.split(","))]
    print(f"{len(meshes)} meshes, {args.points} points, noise {args.noise_mm} mm, budget {args.budget} triangles")
    head = f"{'method':<40} {'ms med':>8} {'ms max':>8} {'cpu ms':>8} {'ASSD mm':>8} {'HD95 mm':>8} " \
           f"{'tris':>7} {'watertight':>10} {'speed-up':>8}"
    print(head)
    print("-" * len(head))
    base_ms = None
    for label, kwargs in methods:
        kw = {"triangle_budget": args.budget, **kwargs}
        times, cpu, assd, hd95, tris, closed = [], [], [], [], [], 0
        templates = [decimated(o3d, meshes[template_index([n for n, _ in meshes], i)][1], args.budget)
                     for i in range(len(meshes))] if kw["method"] == "template" and not args.quick else None
        if kw["method"] == "template" and templates is None:
            continue                       # the quick subset lacks the other-subject templates
        for i, ((_, gt), cloud) in enumerate(zip(meshes, clouds)):
            t0, c0 = time.perf_counter(), time.process_time()
            surf = fit_template(cloud, templates[i]) if templates else mesh_points(cloud, **kw)
            times.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
            a, h = surface_distances(o3d, surf, gt)
            assd.append(a)
            hd95.append(h)
            tris.append(len(surf.triangles))
            closed += is_watertight(surf.triangles)
        med = float(np.median(times))
        base_ms = base_ms or med
        print(f"{label:<40} {med:>8.0f} {max(times):>8.0f} {np.median(cpu):>8.0f} {np.mean(assd):>8.3f} "
              f"{np.mean(hd95):>8.3f} "
              f"{np.median(tris):>7.0f} {f'{closed}/{len(meshes)}':>10} {base_ms / med:>7.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
