import numpy as np
import pytest

from usx_stream.transforms import (
    TransformError,
    TransformRepository,
    apply,
    as_matrix,
    invert,
    rotation,
    split_name,
    translation,
)


def _rigid(seed):
    rng = np.random.default_rng(seed)
    return translation(rng.normal(size=3) * 50) @ rotation(rng.normal(size=3), rng.uniform(-np.pi, np.pi))


def test_split_name_handles_frames_containing_to():
    assert split_name("ImageToProbe") == ("Image", "Probe")
    assert split_name("StylusTipToStylus") == ("StylusTip", "Stylus")
    assert split_name("ToolToReference") == ("Tool", "Reference")
    with pytest.raises(ValueError, match="Probe"):
        split_name("Probe")


def test_get_inverts_and_chains_like_plus():
    image_to_probe = np.diag([0.2, 0.2, 0.2, 1.0]) @ translation([1, 2, 3])
    probe_to_tracker = _rigid(1)
    reference_to_tracker = _rigid(2)
    repo = TransformRepository(
        {"ImageToProbe": image_to_probe, "ProbeToTracker": probe_to_tracker, "ReferenceToTracker": reference_to_tracker}
    )
    expected = np.linalg.inv(reference_to_tracker) @ probe_to_tracker @ image_to_probe
    np.testing.assert_allclose(repo.get("ImageToReference"), expected, atol=1e-12)
    np.testing.assert_allclose(repo.get("ReferenceToImage"), np.linalg.inv(expected), atol=1e-9)
    np.testing.assert_allclose(repo.get("TrackerToProbe"), invert(probe_to_tracker), atol=1e-12)
    np.testing.assert_allclose(repo.get("ProbeToProbe"), np.eye(4))


def test_missing_link_is_named():
    repo = TransformRepository({"ImageToProbe": np.eye(4), "ProbeToTracker": np.eye(4)})
    with pytest.raises(TransformError) as e:
        repo.get("ImageToReference")
    msg = str(e.value)
    assert "'Image'" in msg and "'Reference'" in msg and "ProbeToTracker" in msg


def test_setting_the_inverse_replaces_the_edge():
    repo = TransformRepository({"AToB": translation([1, 0, 0])})
    repo.set("BToA", translation([5, 0, 0]))
    np.testing.assert_allclose(repo.get("AToB"), translation([-5, 0, 0]))
    assert len(repo.names()) == 1


def test_status_propagates_along_the_chain():
    repo = TransformRepository()
    repo.set("ImageToProbe", np.eye(4))
    repo.set("ProbeToTracker", np.eye(4), valid=False)
    repo.set("ReferenceToTracker", np.eye(4))
    assert repo.is_valid("ImageToProbe")
    assert not repo.is_valid("ImageToReference")


def test_matrix_validation_names_the_transform():
    with pytest.raises(ValueError, match="ProbeToTracker.*shape"):
        as_matrix(np.zeros((3, 3)), name="ProbeToTracker")
    with pytest.raises(ValueError, match="non-finite"):
        as_matrix([np.nan] * 16, name="X")
    np.testing.assert_allclose(as_matrix(list(range(12))), np.vstack([np.arange(12).reshape(3, 4), [0, 0, 0, 1]]))


def test_apply_matches_homogeneous_product():
    m = _rigid(3)
    pts = np.random.default_rng(0).normal(size=(10, 3))
    homog = (m @ np.c_[pts, np.ones(10)].T).T[:, :3]
    np.testing.assert_allclose(apply(m, pts), homog, atol=1e-12)
    with pytest.raises(ValueError, match="points"):
        apply(m, np.zeros(3))
