"""A node compounding with the torch backend and ``bone.points_device = "compound"`` extracts its bone points on
the compounding device (here the CPU: the path a GPU node takes, minus the GPU) and publishes what the numba node publishes from the same
frames. Real stages built by the node's one constructor, small untrained networks, a simulated session."""

from __future__ import annotations

import numpy as np
import pytest

from usx_stream.node.assemble import build_node
from usx_stream.node.launch import parse_launch
from usx_stream.sim.session import simulate_session
from usx_stream.sources.memory import MemorySource

from node_fixtures import ROI, tiny_engines



@pytest.fixture(scope="module")
def engines():
    return tiny_engines()


def _run(session, engines, backend: str):
    """One update of a node that compounded the session's first 60 frames with ``backend`` on the CPU."""
    landmarks = {lv: v.centroid_mm.tolist() for lv, v in session.spine.vertebrae.items()}
    cfg = parse_launch({"compound": {**ROI, "backend": backend, "device": "cpu"},
                        "bone": {"landmarks_mm": landmarks, "points_device": "compound" if backend == "torch" else "auto"},
                        "surface": {"grid_mm": 4.0},
                        "completion": {"uncertainty": "off"}, "xray": {"enabled": False}})
    frames = session.frames[:60]
    node = build_node(cfg, source=MemorySource(frames), engines=engines, publishers=[],
                      calibration=session.calibration)
    try:
        for frame in frames:
            node.ingest.add(frame)
        node.ingest.flush()
        result = node.run_update()
    finally:
        node.updater.close()
    return node, result


@pytest.mark.slow
def test_a_torch_node_takes_the_device_path_and_publishes_the_numba_nodes_surfaces(engines):
    session = simulate_session(11, n_frames=60)
    cpu_node, cpu = _run(session, engines, "numba")
    dev_node, dev = _run(session, engines, "torch")
    assert dev_node.ingest.reconstructor.backend == "torch"
    counters = {n: node.telemetry.report()["counters"] for n, node in (("cpu", cpu_node), ("dev", dev_node))}
    assert counters["dev"].get("bone_points_on_device") == 1
    assert "bone_points_on_device" not in counters["cpu"]
    for node in (cpu_node, dev_node):                     # the stages keep their names on both paths
        assert {"snapshot", "bone_points"} <= set(node.telemetry.report()["stages"])
    assert dev.completed and list(dev.surfaces) == list(cpu.surfaces)
    for lv in cpu.surfaces:
        np.testing.assert_allclose(dev.partial_ref_mm[lv], cpu.partial_ref_mm[lv], rtol=0, atol=1e-6)
        np.testing.assert_allclose(dev.surfaces[lv].vertices_mm, cpu.surfaces[lv].vertices_mm, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(dev.surfaces[lv].triangles, cpu.surfaces[lv].triangles)
