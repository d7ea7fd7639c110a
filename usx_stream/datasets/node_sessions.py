"""Training pairs made the way the node sees a spine: simulated session -> ingest -> update inputs.

:mod:`usx_stream.datasets.pairs` makes partial clouds by ray casting in the true vertebra frame. The node
sees less and differently: B-mode bone detection (no echo from the vertebral body, shallower reach), a
compounded 1 mm grid, a split per level that lets some neighbour and false points through, and a
canonical frame it estimates from the level centres. A network trained only on the first kind of input
completes the second kind worse (on the demo spine, 1.7-2.1 mm body ASSD from dataset-style inputs
against 2.0-2.8 mm from the node's). These pairs close that gap: each simulated session (a tracked
B-mode sweep and a lateral X-ray, :func:`~usx_stream.sim.session.simulate_session`) goes through
:class:`~usx_stream.node.ingest.IngestStage` and :meth:`~usx_stream.node.update.SurfaceUpdater.inputs`, the very
code of the live node, and the ground truth is expressed in the frame the node estimated.

About 30 s of CPU per session (five samples); sessions are independent, so ``workers`` processes share
them.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..frames import LEVELS
from ..surface.mesh import sample_surface
from .pairs import SCALE_MM, GenerateReport, PairedSample, collect_pairs
from .shards import shard_attrs, shard_bounds


def session_seed(seed: int, index: int) -> int:
    """The simulation seed of session ``index`` of the stream ``seed`` (disjoint streams per ``seed``)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


@functools.lru_cache(maxsize=2)
def _fixed_spine(spec: str, labels: str, scale: float, frame: str):
    """A spine that every session of a run shares (a real one, or a shape-model draw with its seed),
    read once per process."""
    from ..sim.spine_spec import load_spine

    return load_spine(spec, labels=labels, scale=scale, frame=frame)


def session_spine(spec: str | None, sim_seed: int, *, labels: str = "auto", scale: float = 1.0,
                  frame: str = "LPS"):
    """The spine of one session: None (procedural, drawn by the session's seed), a real spine (the same
    every session; the sweep and X-ray differ), or for ``ssm:FILE`` a new draw per session.

    ``labels``, ``scale`` and ``frame`` read a real spine as :func:`~usx_stream.sim.spine_spec.load_spine`
    does (a label volume's label set; mesh units and axes)."""
    if spec is None:
        return None
    from ..sim.spine_spec import parse_spine, ssm_spine

    parsed = parse_spine(spec)
    if parsed.kind == "ssm" and parsed.seed is None:
        return ssm_spine(parsed.path, sim_seed)[0]
    return _fixed_spine(str(parsed), labels, float(scale), frame)


def node_pairs(index: int, *, seed: int, launch, complete_points: int = 2048, spine: str | None = None,
               variation=None, spine_options: dict | None = None) -> tuple[list[PairedSample], list[str]]:
    """The multimodal network inputs the node computes for session ``index`` at the end of its sweep,
    each with ``complete_points`` ground-truth points in the same unit frame.

    ``launch`` is a launch file or a loaded :class:`~usx_stream.node.launch.LaunchConfig`: its ``[compound]``,
    ``[bone]`` and ``[xray]`` settings and ``source.n_frames`` are the node's. ``spine`` names the anatomy
    (:func:`session_spine`, with ``spine_options``: its ``labels``, ``scale``, ``frame``); ``variation``
    (an :class:`~usx_stream.sim.or_variation.ORVariation`) draws what differs between operating rooms for
    this session: B-mode, sweep, tracking, labelmap and C-arm errors (the ground truth stays exact)."""
    from ..node.assemble import build_node, make_engine
    from ..node.launch import load_launch
    from ..sim.session import simulate_session
    from ..sources.memory import MemorySource
    from ..xray.cache import XrayCache

    cfg = load_launch(launch) if isinstance(launch, (str, Path)) else launch
    cfg = cfg.with_overrides({"record.enabled": False, "publish.igtl_enabled": False, "publish.zmq_enabled": False})
    sim_seed = session_seed(seed, index)
    anatomy = session_spine(spine, sim_seed, **(spine_options or {}))
    if variation is None:
        session = simulate_session(sim_seed, n_frames=cfg.source.n_frames, spine=anatomy)
        frames = session.frames
        xray = XrayCache(geometry=session.xray.geometry)
        xray.update_from_xray_image(session.xray)
    else:
        vary_rng = np.random.default_rng([sim_seed, 0x0A])
        drawn = variation.draw(vary_rng)
        session = simulate_session(sim_seed, spine=anatomy, **drawn.simulate_kwargs(n_frames=cfg.source.n_frames))
        frames, xray = drawn.apply(session, vary_rng)
    # the engines only give the input point counts here: nothing is completed
    engines = {v: make_engine(v, cfg, warmup=False) for v in ("multimodal", "us_only")}
    # The node's own stages, built by the node's one constructor, driven frame by frame on this thread
    # (no threads or sockets: a dataset worker runs many sessions).
    node = build_node(cfg, source=MemorySource(frames), engines=engines, xray=xray, publishers=[],
                      calibration=session.calibration)
    node.updater.seed = sim_seed
    for frame in frames:
        node.ingest.add(frame)
    node.ingest.flush()
    volume, info = node.ingest.snapshot()
    name = f"session{index:05d}"
    if volume is None:
        return [], [f"{name}: no frame reached the volume"]
    inputs = node.updater.inputs(volume, beam_direction=info["beam_direction"], xray=xray.snapshot(),
                                 force_fusion="multimodal")
    rng = np.random.default_rng(sim_seed)
    samples, skipped = [], [f"{name}/{lv}: not split out of the bone points" for lv in LEVELS
                            if lv not in {c.level for c in inputs.clouds}]
    for cloud in inputs.clouds:
        truth = sample_surface(session.spine.vertebrae[cloud.level].mesh, complete_points, seed=rng)
        m = np.asarray(cloud.model_to_reference, dtype=np.float64)
        unit = np.linalg.solve(m[:3, :3], (truth - m[:3, 3]).T).T  # Reference mm -> the cloud's unit frame
        # the unit frame's origin in the estimated canonical axes (the rows of m[:3, :3] / SCALE_MM)
        center = (m[:3, :3] / SCALE_MM).T @ m[:3, 3]
        samples.append(PairedSample(level=cloud.level, partial=cloud.partial, labelmap=cloud.labelmap_points,
                                    complete=unit.astype(np.float32), name=f"{name}/{cloud.level}",
                                    center_mm=center))
    return samples, skipped


def generate_node(out: str | Path, *, sessions: int, seed: int, launch: str | Path, workers: int = 1,
                  command: str = "", progress: bool = True, shard: tuple[int, int] | None = None,
                  spine: str | None = None, variation=None, complete_points: int = 2048,
                  spine_options: dict | None = None) -> GenerateReport:
    """Write the :func:`node_pairs` of ``sessions`` simulated sessions to ``out`` (the layout of
    :mod:`usx_stream.train.data`, like ``usx-stream dataset``); ``shard = (i, n)`` writes only part ``i``
    of ``n`` (:func:`~usx_stream.datasets.pairs.shard_bounds`), for ``usx-stream dataset --merge``.
    ``spine``, ``spine_options``, ``variation`` and ``complete_points`` as in :func:`node_pairs`."""
    from ..sim.spine_spec import parse_spine
    from ..train.data import write_pairs

    if sessions < 1:
        raise ValueError(f"sessions: must be >= 1, got {sessions}")
    if workers < 1:
        raise ValueError(f"workers: must be >= 1, got {workers}")
    if complete_points < 1:
        raise ValueError(f"complete_points: must be >= 1, got {complete_points}")
    if spine is not None and parse_spine(spine).kind == "path":
        session_spine(str(spine), 0, **(spine_options or {}))  # an unreadable spine fails here, once
    fn = functools.partial(node_pairs, seed=seed, launch=launch, spine=None if spine is None else str(spine),
                           variation=variation, complete_points=int(complete_points), spine_options=spine_options)
    start, stop = shard_bounds(sessions, shard)
    samples, skipped = collect_pairs(fn, list(range(start, stop)), workers=workers, progress=progress)
    attrs = {"seed": int(seed), "source": "node", "command": command, "skipped": skipped,
             "launch": str(launch), "frame": "estimated", "spine": "procedural" if spine is None else str(spine),
             **({f"spine_{k}": str(v) for k, v in spine_options.items()} if spine and spine_options else {}),
             "or_variation": "none" if variation is None else repr(variation), **shard_attrs(sessions, shard)}
    path = write_pairs(out, samples, attrs=attrs, mm_per_unit=SCALE_MM)
    counts = {lv: sum(s.level == lv for s in samples) for lv in LEVELS}
    return GenerateReport(path, len(samples), skipped, counts)
