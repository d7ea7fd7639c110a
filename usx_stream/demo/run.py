"""The built-in demo: a simulated phantom session streamed through the whole node, scored against truth.

1. simulate a session (seed from ``launch/demo.toml``; a procedural spine, or a real one with ``spine=``)
   and write it (sequence, X-ray, labelmap, meshes), or take an existing session folder (``session=``);
2. serve the sequence with the PlusServer-like replay server on 127.0.0.1 at its recorded 30 fps;
3. run the node on it (OpenIGTLink in, compounding, bone, X-ray fusion, completion, meshing, POLYDATA out
   to a real OpenIGTLink client that counts what arrives);
4. on the final volume, complete once with the multimodal model and once with the US-only fallback;
5. write ``L1.ply`` … ``L5.ply``, ``demo.png``, ``demo_uncertainty.png`` (the completed surfaces coloured
   by their per-vertex ``uncertainty_mm``; not written when they carry none) and ``report.json`` (accuracy
   per level present in mm against the ground truth, whole and body, both models, with each surface's mean
   uncertainty; end-to-end latency percentiles and the stage breakdown). The body/arch split of the scores
   is the paper's, in each level's ground-truth frame (``vertebra_to_reference`` of ``ground_truth.json``;
   for a real spine its axes are the patient axes).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from ..frames import LEVELS, Surface
from ..transforms import apply

log = logging.getLogger(__name__)

UNCERTAINTY = "uncertainty_mm"
# What uncertainty_mm means depends on how it was made (surface metadata ``uncertainty_method``).
_UNCERTAINTY_MEANING = {
    "error_head": "expected distance to the true surface per vertex, from the error head",
    "latent": "spread of the latent completions per vertex",
}


def _vertebra_frame_points(points_ref: np.ndarray, vertebra) -> np.ndarray:
    return apply(np.linalg.inv(vertebra.frame), points_ref)


def score_level(completed_ref_mm: np.ndarray, vertebra, *, n_gt: int = 8192, seed: int = 0) -> dict:
    """ASSD and HD95 (mm), whole vertebra and body, of a completed cloud against the true mesh.

    The body/arch split is the paper's: in the vertebra frame (y posterior), points anterior of the
    ground-truth centroid are body.
    """
    from ..metrics import evaluate_completion
    from ..surface.mesh import sample_surface

    gt = _vertebra_frame_points(sample_surface(vertebra.mesh, n_gt, seed=seed), vertebra)
    pred = _vertebra_frame_points(completed_ref_mm, vertebra)
    m = evaluate_completion(pred, gt, mm_per_unit=1.0)
    return {"assd_mm": m["whole"]["assd_mm"], "hd95_mm": m["whole"]["hd95_mm"],
            "body_assd_mm": m["body"]["assd_mm"], "body_hd95_mm": m["body"]["hd95_mm"]}


def run_demo(out_dir: str | Path, *, launch: str | Path | None = None, seed: int | None = None,
             n_frames: int | None = None, session: str | Path | None = None, spine: str | Path | None = None,
             labels: str = "auto", scale: float = 1.0, frame: str = "LPS") -> dict:
    """Run the demo into ``out_dir``; returns the report (also written as ``report.json``).

    Parameters
    ----------
    out_dir : str or Path
    launch : path, keyword-only
        Launch file (default ``launch/demo.toml``).
    seed, n_frames : int, keyword-only
        Simulation seed and frame count (default: the launch file's); unused with ``session``.
    session : path, keyword-only
        An existing session folder (``usx-stream simulate``) to stream instead of simulating one.
    spine : path or str, keyword-only
        Simulate from this spine: a real one, or ``ssm:FILE[:SEED]`` (:mod:`usx_stream.sim.spine_spec`;
        ``labels``, ``scale``, ``frame`` as there).
    """
    from ..errors import InputError
    from ..node.assemble import default_launch_dir
    from ..node.launch import load_launch
    from .live import LiveSimulation
    from ..sim.session import load_session, simulate_session, write_session

    if session is not None and spine is not None:
        raise InputError("demo: give --session or --spine, not both")
    out = Path(out_dir)
    cfg = load_launch(launch or default_launch_dir() / "demo.toml")
    cfg = cfg.with_overrides({"record.dir": str(out / "recording"), "telemetry.report_path": str(out / "telemetry.json")})
    seed = int(cfg.source.seed if seed is None else seed)
    t0 = time.monotonic()
    real = None
    if session is not None:
        sim = load_session(session)
        sequence = Path(session) / "sim_session.igs.mha"
        if sim.xray is None:
            raise InputError(f"--session {session}: the session has no X-ray (simulated with --no-xray?)")
        log.info("read session %s: %d frames in %.1f s", session, len(sim.frames), time.monotonic() - t0)
    elif spine is not None:
        from ..sim.spine_spec import load_spine

        real = load_spine(spine, seed=seed, labels=labels, scale=scale, frame=frame)
    out.mkdir(parents=True, exist_ok=True)   # only now: bad input leaves no half-made output folder
    if session is None:
        sim = simulate_session(seed, n_frames=n_frames or cfg.source.n_frames, spine=real)
        sequence = write_session(sim, out / "session")["sequence"]
        log.info("simulated %d frames in %.1f s", len(sim.frames), time.monotonic() - t0)
    live = LiveSimulation(cfg, sim, sequence, rate=None)
    live.start()
    try:
        live.run_to_end()
    finally:
        live.stop()
    if live.node.error is not None:
        raise RuntimeError("the node failed during the demo") from live.node.error
    live.node.telemetry.write_json(cfg.telemetry.report_path)
    extra = {"session_dir": str(session)} if session is not None else {}
    extra["uncertainty_received_by_client_mm"] = live.received_uncertainty()
    if "source" in sim.spine.metadata:
        extra["spine"] = dict(sim.spine.metadata)
    return _finish(out, live.node, sim, live.received, extra=extra)


def _finish(out: Path, node, session, received, *, extra: dict | None = None) -> dict:
    from ..io.meshes import write_mesh

    volume, info = node.ingest.snapshot()
    # Scored: every level completed from the final volume. A surface the live node kept from an earlier update
    # (node.reuse) depends on when that update ran, so the same session would score differently run to run.
    try:
        finals = {f: node.updater.update(volume, beam_direction=info["beam_direction"], xray=node.xray.snapshot(),
                                         force_fusion=f, reuse=False) for f in ("multimodal", "us_only")}
    finally:
        node.updater.close()
    levels = {}
    for lv in (lv for lv in LEVELS if lv in session.spine.vertebrae):
        v = session.spine.vertebrae[lv]
        entry = {}
        for fusion, res in finals.items():
            if lv in res.points_ref_mm:
                entry[fusion] = score_level(res.points_ref_mm[lv], v)
                # the uncertainty the node published, beside the true error above, to compare the two
                mean = res.surfaces[lv].metadata.get("uncertainty_mean_mm") if lv in res.surfaces else None
                if mean is not None:
                    entry[fusion]["uncertainty_mean_mm"] = float(mean)
        levels[lv] = entry
        if lv in finals["multimodal"].surfaces:
            write_mesh(out / f"{lv}.ply", finals["multimodal"].surfaces[lv])
    report = {
        "seed": session.seed, "frames": len(session.frames), "frames_compounded": node.ingest.frames_pasted,
        "updates_published": node.updates, "surfaces_received_by_client": received,
        "levels": levels, "node_status": node.status, "latency_ms": _latency(node.telemetry.report()),
        "source": node.source.stats(), **(extra or {}),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    _picture(out / "demo.png", session, finals["multimodal"])
    _uncertainty_picture(out / "demo_uncertainty.png", finals["multimodal"].surfaces, _describe(session))
    report["files"] = sorted(str(p.relative_to(out)) for p in out.glob("*") if p.is_file())
    return report


def _jsonable(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    return str(o)


def _latency(tel: dict) -> dict:
    """``{"p50", "p95", "p99"}`` of the end-to-end latency and every stage's figures, ms."""
    stages = tel.get("stages", {})
    e2e = stages.get("end_to_end", {})
    keep = ("count", "p50_ms", "p95_ms", "p99_ms", "max_ms")
    return {"p50": e2e.get("p50_ms"), "p95": e2e.get("p95_ms"), "p99": e2e.get("p99_ms"),
            "stages": {name: {k: s.get(k) for k in keep} for name, s in stages.items()}}


def _picture(path: Path, session, result) -> None:
    """Three panels: what the node sees (two tracked B-mode planes, the ultrasound bone points, the X-ray
    labelmap points on each vertebra's mid-sagittal plane, over the ground truth in grey); the completed
    surfaces (a colour per level) over the ground truth; the same from the side, where the vertebral
    bodies that ultrasound cannot see are."""
    from .pictures import ImagePlane, Panel, render_panels

    truth: dict[str, Surface] = {f"gt_{lv}": v.mesh for lv, v in session.spine.vertebrae.items()}
    frames = session.frames
    planes = [ImagePlane(frames[i].pixels, session.image_to_reference(i)) for i in (len(frames) // 6, len(frames) // 2)]
    points = {"US bone points": _concat(result.partial_ref_mm), "X-ray labelmap points": _concat(result.labelmap_ref_mm)}
    completed = {**truth, **result.surfaces}
    panels = [
        Panel(truth, planes, points, view=(20, -65), title="inputs: tracked US, bone points, X-ray labelmap", mesh_alpha=0.25),
        Panel(completed, view=(20, -65), title="completed (colour) over ground truth (grey)", mesh_alpha=0.45),
        Panel(completed, view=(5, 0), title="side view: vertebral bodies", mesh_alpha=0.45),
    ]
    render_panels(path, panels, title=f"usx-stream demo, {_describe(session)}")


def _describe(session) -> str:
    source = session.spine.metadata.get("source")
    if source:
        return f"spine {Path(source).name}, seed {session.seed}"
    return f"simulated session seed {session.seed}"


def _uncertainty_picture(path: Path, surfaces: dict[str, Surface], what: str) -> bool:
    """demo.png's two completed-surface views again, each surface coloured by its per-vertex ``uncertainty_mm``
    (no ground truth: grey meshes over the colours would hide them). False, with a log line and no file,
    when no surface carries it (``completion.uncertainty = "off"``, or custom weights without an error head)."""
    from .pictures import Panel, render_panels

    carrying = {lv: s for lv, s in surfaces.items() if UNCERTAINTY in s.point_data}
    if not carrying:
        log.info("no %s: the completed surfaces carry no %s (completion.uncertainty = \"off\"?)", path.name,
                 UNCERTAINTY)
        return False
    methods = sorted({str(s.metadata.get("uncertainty_method", "")) for s in carrying.values()})
    meaning = "; ".join(_UNCERTAINTY_MEANING.get(m, f"method {m or 'unknown'}") for m in methods)
    panels = [Panel(carrying, view=view, title=title, colour_by=UNCERTAINTY, colour_label="uncertainty (mm)")
              for view, title in (((20, -65), "completed surfaces"), ((5, 0), "side view: vertebral bodies"))]
    render_panels(path, panels, title=f"usx-stream demo, {what}: {UNCERTAINTY} = {meaning}")
    return True


def _concat(d: dict) -> np.ndarray:
    arrays = [a for a in d.values() if len(a)]
    return np.vstack(arrays) if arrays else np.zeros((0, 3))
