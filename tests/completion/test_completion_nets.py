"""The completion network: shapes, determinism, training outputs, sampling, configuration checks."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_config, tiny_inputs

from usx_stream.completion.nets import (
    CompletionNet, InferenceModule, ModelConfig, build_model, point_uncertainty)
from usx_stream.completion.renet import ordered_pool_indices


@pytest.mark.parametrize("multimodal", [True, False])
def test_eval_is_deterministic_with_documented_shapes(multimodal):
    cfg = tiny_config(multimodal=multimodal)
    torch.manual_seed(0)
    net = build_model(cfg).eval()
    partial, labelmap = tiny_inputs(cfg, 3)
    with torch.no_grad():
        a, b = net(partial, labelmap), net(partial, labelmap)
    assert a["fine"].shape == (3, cfg.num_out, 3)
    assert a["coarse"].shape == (3, cfg.num_coarse_raw, 3)
    assert torch.equal(a["fine"], b["fine"])
    with torch.no_grad():
        alone = net(partial[1:2], None if labelmap is None else labelmap[1:2])["fine"]
    torch.testing.assert_close(alone[0], a["fine"][1], rtol=1e-4, atol=1e-5)


def test_training_outputs_and_loss_backpropagates(tiny_cfg):
    torch.manual_seed(0)
    net = build_model(tiny_cfg).train()
    partial, labelmap = tiny_inputs(tiny_cfg, 2)
    gt = torch.rand(2, 150, 3) * 2 - 1
    out = net(partial, labelmap, gt)
    assert out["coarse_raw"].shape == (4, tiny_cfg.num_coarse_raw, 3)
    assert out["coarse_high"].shape == (4, tiny_cfg.num_refine * tiny_cfg.up_ratio, 3)
    assert out["coarse"].shape == out["fine"].shape == (4, tiny_cfg.num_out, 3)
    assert out["gt"].shape == (4, 150, 3)
    assert out["kl_rec"].shape == out["kl_gen"].shape == (2, tiny_cfg.latent)
    assert (out["kl_rec"] >= -1e-6).all() and (out["kl_gen"] >= -1e-6).all()

    def cd(a, b):
        d = torch.cdist(a, b) ** 2
        return (d.min(2).values.sqrt().mean(1) + d.min(1).values.sqrt().mean(1)) / 2

    loss = (10 * cd(out["coarse_raw"], out["gt"]) + 0.5 * cd(out["coarse_high"], out["gt"])
            + cd(out["coarse"], out["gt"]) + 0.1 * cd(out["fine"], out["gt"])).mean()
    loss = loss + 20 * (out["kl_rec"].mean() + out["kl_gen"].mean())
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert net.encoder_labelmap.conv1.weight.grad.abs().sum() > 0


def test_sample_spread_and_uncertainty(tiny_cfg):
    torch.manual_seed(0)
    net = build_model(tiny_cfg).eval()
    partial, labelmap = tiny_inputs(tiny_cfg, 2)
    samples = net.sample(partial, labelmap, 4, generator=torch.Generator().manual_seed(3))
    assert samples.shape == (2, 4, tiny_cfg.num_out, 3)
    spread = point_uncertainty(samples)
    assert spread.shape == (2, tiny_cfg.num_out) and (spread >= 0).all() and spread.sum() > 0
    again = net.sample(partial, labelmap, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(samples, again)
    with pytest.raises(ValueError, match="k must be"):
        net.sample(partial, labelmap, 0)


def test_fps_sampling_mode_runs(tiny_cfg):
    cfg = tiny_config(sampling="fps")
    net = build_model(cfg).eval()
    partial, labelmap = tiny_inputs(cfg, 2)
    with torch.no_grad():
        assert net(partial, labelmap)["fine"].shape == (2, cfg.num_out, 3)


def test_inference_module_matches_net(tiny_cfg):
    net = build_model(tiny_cfg).eval()
    partial, labelmap = tiny_inputs(tiny_cfg, 2)
    with torch.no_grad():
        torch.testing.assert_close(InferenceModule(net)(partial, labelmap), net(partial, labelmap)["fine"])


def test_input_validation(tiny_cfg):
    net = build_model(tiny_cfg).eval()
    partial, labelmap = tiny_inputs(tiny_cfg, 2)
    with pytest.raises(ValueError, match="partial must be"):
        net(partial[:, :10], labelmap)
    with pytest.raises(ValueError, match="labelmap must be"):
        net(partial, None)
    with pytest.raises(ValueError, match="gt must be"):
        net.train()(partial, labelmap, torch.zeros(2, 10, 3))


def test_config_presets_and_validation():
    small = ModelConfig.small()
    assert small.num_refine * small.up_ratio == small.num_out == 2048
    assert ModelConfig.small(multimodal=False).num_refine == 1024
    paper = ModelConfig.paper()
    assert (paper.num_refine, paper.num_out, paper.feature_size, paper.sampling) == (10240, 4096, 1024, "fps")
    assert ModelConfig.from_dict(small.to_dict()) == small
    with pytest.raises(ValueError, match="num_out"):
        tiny_config(num_out=1000)
    with pytest.raises(ValueError, match="sampling"):
        tiny_config(sampling="random")
    with pytest.raises(ValueError, match="pool_points"):
        tiny_config(pool_points=(40, 50, 10))
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="ModelConfig"):
        build_model({"multimodal": True})


def test_ordered_pool_indices_keep_prefixes():
    levels = ordered_pool_indices([6, 8, 2], [8, 4])
    assert levels[0].tolist() == [0, 1, 2, 6, 7, 8, 9, 14]  # 3 coarse, 4 partial, 1 labelmap
    assert levels[1].tolist() == [0, 1, 3, 4]  # of those: 2 coarse, 2 partial, 0 labelmap


def test_small_model_is_a_completion_net():
    assert isinstance(build_model(tiny_config()), CompletionNet)
