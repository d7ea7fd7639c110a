"""Completion uncertainty: the mean and K latent draws in one batch, the spread's definition, the front door."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import tiny_config, tiny_inputs

from usx_stream.completion import uncertainty as unc
from usx_stream.completion.engine import CompletionEngine
from usx_stream.completion.front import LevelPoints, complete_levels
from usx_stream.completion.nets import build_model
from usx_stream.completion.prepare import vertebra_rotation


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_model(tiny_config()).eval()


def test_mean_row_is_the_forward_pass_and_draw_rows_are_sample(net):
    partial, labelmap = tiny_inputs(net.cfg, 3)
    eps = unc.latent_draws(4, 3, net.cfg.latent, seed=5)
    with torch.no_grad():
        out = net.mean_and_samples(partial, labelmap, eps)
        mean = net(partial, labelmap)["fine"]
    assert out.shape == (3, 5, net.cfg.num_out, 3)
    torch.testing.assert_close(out[:, 0], mean, rtol=1e-5, atol=1e-5)
    drawn = net.sample(partial, labelmap, 4, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out[:, 1:], drawn, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[:, 1], out[:, 2])               # the draws differ
    with pytest.raises(ValueError, match="eps must be"):
        net.mean_and_samples(partial, labelmap, eps[:, :2])


def test_index_correspondence_only_where_the_architecture_gives_it():
    assert build_model(tiny_config()).index_correspondence                        # ordered: fixed index_select
    assert not build_model(tiny_config(sampling="fps")).index_correspondence      # FPS picks the output
    assert build_model(tiny_config(sampling="fps", num_out=160)).index_correspondence  # FPS keeps everything
    assert unc.resolve_correspondence("auto", True) == "index"
    assert unc.resolve_correspondence("auto", False) == "nearest"
    with pytest.raises(ValueError, match="nearest"):
        unc.resolve_correspondence("index", False)
    with pytest.raises(ValueError, match="correspondence"):
        unc.resolve_correspondence("closest", True)


@pytest.mark.parametrize("how", ["index", "nearest"])
def test_spread_is_zero_for_equal_draws_and_the_rms_distance_otherwise(how):
    rng = np.random.default_rng(0)
    mean = torch.from_numpy(rng.normal(size=(2, 50, 3)).astype(np.float32))
    same = mean.unsqueeze(1).repeat(1, 3, 1, 1)
    assert torch.equal(unc.point_spread(mean, same, correspondence=how), torch.zeros(2, 50))
    # every point of draw k moved by a tiny step (much less than the point spacing): both definitions agree
    shift = torch.tensor([1e-3, 2e-3, 0.0])
    moved = torch.stack([mean + shift, mean - shift, mean + 2 * shift], dim=1)
    expected = float(np.sqrt((1 + 1 + 4) / 3) * shift.norm())
    torch.testing.assert_close(unc.point_spread(mean, moved, correspondence=how), torch.full((2, 50), expected),
                               rtol=1e-3, atol=1e-7)
    assert unc.point_spread(mean, same[:, :0], correspondence=how).abs().sum() == 0   # K = 0


def test_spread_of_a_deterministic_model_is_zero(net, monkeypatch):
    posterior = net._posterior
    monkeypatch.setattr(net, "_posterior", lambda *a: (posterior(*a)[0], torch.zeros_like(posterior(*a)[1])))
    partial, labelmap = tiny_inputs(net.cfg, 2)
    with torch.no_grad():
        out = net.mean_and_samples(partial, labelmap, unc.latent_draws(3, 2, net.cfg.latent))
    spread = unc.point_spread(out[:, 0], out[:, 1:], correspondence="index")
    assert spread.abs().max() < 1e-6


def _levels(seed: int = 4) -> list[LevelPoints]:
    rng = np.random.default_rng(seed)
    out = []
    for k, lv in enumerate(("L2", "L3", "L4")):
        centre = np.array([10.0, 40.0, 120.0 - 35.0 * k])
        rot = vertebra_rotation(cranial=[0.1, 0.2, 1.0], posterior=[0.0, 1.0, 0.1 * k])
        partial = centre + rng.normal(0.0, [20.0, 8.0, 12.0], (700, 3)) @ rot
        labelmap = centre + rng.normal(0.0, [1.0, 8.0, 12.0], (300, 3)) @ rot - 25.0 * rot[1]
        out.append(LevelPoints(lv, partial, labelmap, rot))
    return out + [LevelPoints("L5", np.zeros((0, 3)), None, None)]


@pytest.mark.parametrize("fit_body", [False, True])
def test_front_door_spread_in_mm_and_k0_unchanged(net, fit_body):
    engine = CompletionEngine(net, device="cpu", max_batch=2, warmup=False)   # 3 vertebrae: two chunks
    levels = _levels()
    plain = complete_levels(engine, levels, fit_body=fit_body)
    k0 = complete_levels(engine, levels, fit_body=fit_body, samples=0)
    drawn = complete_levels(engine, levels, fit_body=fit_body, samples=4)
    again = complete_levels(engine, levels, fit_body=fit_body, samples=4)
    for a, b, c, d in zip(plain, k0, drawn, again):
        np.testing.assert_array_equal(a.points_mm, b.points_mm)            # K = 0: bit for bit today's points
        assert a.spread_mm is None and b.spread_mm is None
        if a.prepared is None:
            assert c.spread_mm is None and len(c.points_mm) == 0
            continue
        np.testing.assert_allclose(c.points_mm, a.points_mm, atol=1e-3)    # the mean row of the bigger batch
        assert c.spread_mm.shape == (net.cfg.num_out,) and c.spread_mm.dtype == np.float32
        assert np.isfinite(c.spread_mm).all() and (c.spread_mm >= 0).all() and c.spread_mm.max() > 0
        np.testing.assert_array_equal(c.spread_mm, d.spread_mm)            # seeded draws: replayable
    # mm: the unit-frame spread times the vertebra's scale (50 mm per unit)
    p = drawn[0].prepared
    eps = unc.latent_draws(4, 3, net.cfg.latent, seed=0)[:, :1]
    with torch.no_grad():
        out = net.mean_and_samples(torch.from_numpy(p.partial_unit[None]), torch.from_numpy(p.labelmap_unit[None]), eps)
    unit = unc.point_spread(out[:, 0], out[:, 1:], correspondence="index")[0].numpy()
    np.testing.assert_allclose(drawn[0].spread_mm, unit * 50.0, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="samples"):
        complete_levels(engine, levels, samples=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_draws_on_cuda_match_the_cpu(net):
    partial, labelmap = tiny_inputs(net.cfg, 2)
    eps = unc.latent_draws(3, 2, net.cfg.latent)
    cpu = CompletionEngine(net, device="cpu", warmup=False).run_device_samples(partial, labelmap, eps)
    gpu = CompletionEngine(build_model(net.cfg).eval(), device="cuda", backend="eager", precision="fp32",
                           warmup=False)
    gpu.model.load_state_dict(net.state_dict())
    out = gpu.run_device_samples(partial.cuda(), labelmap.cuda(), eps)
    torch.testing.assert_close(out.cpu(), cpu, rtol=1e-3, atol=1e-3)
