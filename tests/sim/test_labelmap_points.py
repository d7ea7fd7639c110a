"""The simulator's X-ray labelmap points come from the node's C-arm model and back-projection."""

from __future__ import annotations

import numpy as np

from usx_stream.frames import Surface
from usx_stream.datasets import pairs as dataset
from usx_stream.sim import labelmap_points
from usx_stream.sim.labelmap_points import render_body_labelmap
from usx_stream.xray import backproject
from usx_stream.xray.backproject import backproject_levels, backproject_to_plane
from usx_stream.xray.geometry import CArmGeometry


def _sphere(radius: float, centre, n: int = 32) -> Surface:
    th, ph = np.meshgrid(np.linspace(0, np.pi, n), np.linspace(0, 2 * np.pi, 2 * n, endpoint=False), indexing="ij")
    v = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1).reshape(-1, 3) * radius
    idx = np.arange(n * 2 * n).reshape(n, 2 * n)
    tris = [t for i in range(n - 1) for j in range(2 * n)
            for a, b, c, d in [(idx[i, j], idx[i, (j + 1) % (2 * n)], idx[i + 1, j], idx[i + 1, (j + 1) % (2 * n)])]
            for t in ((a, c, b), (b, c, d))]
    return Surface(v + np.asarray(centre, float), np.array(tris))


def _oblique_view(rng) -> CArmGeometry:
    lateral = np.array([1.0, 0.0, 0.0]) + rng.normal(0, 0.1, 3)
    cranial = np.array([0.0, 0.0, 1.0]) + rng.normal(0, 0.1, 3)
    return CArmGeometry.lateral(rng.normal(0, 20, 3), lateral=-lateral, cranial=cranial, source_to_target_mm=720.0,
                                source_to_detector_mm=1150.0, pixel_spacing_mm=0.3, shape=(2048, 2048))


def _vertebrae_stub():
    """Three vertebra poses 35 mm apart along z (no meshes: a view needs only the frames)."""
    from usx_stream.datasets.mesh_alignment import CanonicalVertebra

    frames = []
    for k in range(3):
        m = np.eye(4)
        m[:3, 3] = [0.0, 0.0, 35.0 * k]
        frames.append(CanonicalVertebra(f"L{k + 1}", None, None, m))
    return frames


def test_one_c_arm_model_and_one_back_projection():
    # The simulator's labelmap module defines no camera and no back-projection of its own.
    own = {name for name, obj in vars(labelmap_points).items()
           if getattr(obj, "__module__", None) == labelmap_points.__name__}
    assert own == {"CroppedLabelmap", "render_body_labelmap"}
    assert dataset.backproject_to_plane is backproject.backproject_to_plane
    view = dataset._xray_view(_vertebrae_stub(), dataset.PairConfig(), np.random.default_rng(3))
    assert type(view) is CArmGeometry


def test_projected_points_come_back_from_their_pixels_on_their_plane():
    rng = np.random.default_rng(11)
    for _ in range(5):
        view = _oblique_view(rng)
        normal = view.xray_to_reference[:3, 2] + rng.normal(0, 0.15, 3)
        centre = view.isocenter_ref_mm + rng.normal(0, 15, 3)
        # Random points on the plane through ``centre`` with that normal.
        e1 = np.cross(normal, [0.3, 1.0, 0.2])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(normal / np.linalg.norm(normal), e1)
        pts = centre + rng.uniform(-40, 40, (300, 1)) * e1 + rng.uniform(-40, 40, (300, 1)) * e2
        uv = view.project(pts)
        back, kept = backproject_to_plane(view, uv, plane_point_mm=centre, plane_normal=normal, return_kept=True)
        assert kept.all()
        np.testing.assert_allclose(back, pts, rtol=0, atol=1e-9)


def test_a_ray_parallel_to_the_plane_is_dropped_never_nan():
    view = _oblique_view(np.random.default_rng(5))
    uv = np.array([[1000.0, 1000.0], [40.0, 1900.0], [1500.0, 300.0]])
    _, dirs = view.pixel_rays(uv)
    centre = view.isocenter_ref_mm
    normal = np.cross(dirs[1], view.xray_to_reference[:3, 0])  # ray 1 lies along the plane
    back, kept = backproject_to_plane(view, uv, plane_point_mm=centre, plane_normal=normal, return_kept=True)
    assert kept.tolist() == [True, False, True]
    assert back.shape == (2, 3) and np.all(np.isfinite(back))
    np.testing.assert_allclose(view.project(back), uv[kept], atol=1e-6)


def test_simulated_labelmap_points_equal_the_node_ones_for_the_same_xray():
    view = CArmGeometry.lateral([0.0, 0.0, 0.0], lateral=[1.0, 0.0, 0.0], cranial=[0.0, 0.0, 1.0],
                                source_to_target_mm=700.0, source_to_detector_mm=1000.0, pixel_spacing_mm=0.5,
                                shape=(256, 256))
    crop = render_body_labelmap(_sphere(12.0, (0.0, 5.0, -8.0)), view)
    pixels = crop.labelled_pixels()
    assert len(pixels) > 500
    # The simulator: the body's pixels on the vertebra's mid-sagittal plane (here the one through the target).
    simulated = backproject_to_plane(view, pixels, plane_point_mm=[0.0, 0.0, 0.0], plane_normal=[1.0, 0.0, 0.0])
    # The node: the same pixels as label 3 of a full-detector labelmap, centre on the principal ray.
    labelmap = np.zeros(view.detector_shape, dtype=np.uint8)
    labelmap[pixels[:, 1], pixels[:, 0]] = 3
    node = backproject_levels(labelmap, view, centres_mm={"L3": [0.0, 0.0, 0.0]})["L3"]
    np.testing.assert_allclose(node, simulated, rtol=0, atol=1e-9)
    np.testing.assert_allclose(simulated[:, 0], 0.0, atol=1e-9)
