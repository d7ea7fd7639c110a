"""Training configuration parsing and the loss of DESIGN §4."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from usx_stream.metrics import chamfer_cdp, evaluate_completion
from usx_stream.train.config import TrainConfig, load_train_config
from usx_stream.train.losses import alpha_for_epoch, body_chamfer_cdp, completion_loss


def test_toml_config_and_overrides(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text('[train]\ndata = "a.h5"\nval = "b.h5"\nvariant = "us_only"\nlr = 1\nepochs = 7\n')
    cfg = load_train_config(path, epochs=None, batch_size=4)
    assert (cfg.data, cfg.val, cfg.variant, cfg.lr, cfg.epochs, cfg.batch_size) == ("a.h5", "b.h5", "us_only", 1.0, 7, 4)


@pytest.mark.parametrize("text, match", [
    ('[train]\ndata = "a.h5"\nlearning_rate = 1e-3\n', "train.learning_rate: unknown key"),
    ('[train]\ndata = "a.h5"\nepochs = "ten"\n', "train.epochs: expected int"),
    ('[train]\ndata = "a.h5"\nvariant = "xray_only"\n', "train.variant"),
    ('[train]\nepochs = 3\n', "train.data"),
    ('[train]\ndata = "a.h5"\nlr_decay = 1.5\n', "train.lr_decay"),
    ('[train\ndata = "a.h5"\n', r"train config .*bad\.toml: Expected '\]'"),
])
def test_config_errors_name_the_key(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_train_config(path)


def test_alpha_schedule():
    assert [alpha_for_epoch(e) for e in (0, 4, 5, 14, 15, 29, 30, 200)] == [0.01, 0.01, 0.1, 0.1, 0.5, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="epoch"):
        alpha_for_epoch(-1)


def _out(shared: bool):
    gen = torch.Generator().manual_seed(0)
    gt = torch.randn(4, 64, 3, generator=gen)
    a, b = torch.randn(4, 32, 3, generator=gen), torch.randn(4, 64, 3, generator=gen)
    kl = torch.rand(2, 8, generator=gen)
    return {"coarse_raw": a, "coarse_high": b, "coarse": b if shared else b.clone(), "fine": b if shared else b.clone(),
            "gt": gt, "kl_rec": kl, "kl_gen": 2 * kl}


def test_loss_is_the_weighted_sum_and_shared_outputs_count_once():
    out = _out(shared=True)
    loss, parts = completion_loss(out, alpha=0.1)
    gt = out["gt"]
    expected = (10 * chamfer_cdp(out["coarse_raw"], gt).mean() + (0.5 + 1 + 0.1) * chamfer_cdp(out["fine"], gt).mean()
                + 20 * (out["kl_rec"].mean() + out["kl_gen"].mean()))
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    separate, _ = completion_loss(_out(shared=False), alpha=0.1)
    assert float(separate) == pytest.approx(float(loss), rel=1e-6)
    assert parts["total"] == pytest.approx(float(loss)) and parts["cd_coarse"] == parts["cd_fine"]
    with pytest.raises(ValueError, match="kl_gen"):
        completion_loss({k: v for k, v in out.items() if k != "kl_gen"}, alpha=0.1)


def test_body_term_is_the_body_cd_p_the_figures_report():
    gen = torch.Generator().manual_seed(3)
    pred = torch.randn(3, 200, 3, generator=gen, dtype=torch.float64)
    gt = torch.randn(3, 150, 3, generator=gen, dtype=torch.float64) * 1.2 + 0.1
    got = body_chamfer_cdp(pred, gt, chunk=37)          # several chunks, one partial
    for i in range(3):
        want = evaluate_completion(pred[i].numpy(), gt[i].numpy(), mm_per_unit=1.0)["body"]["cd_p"]
        assert float(got[i]) == pytest.approx(want, rel=1e-6)


def test_body_term_moves_only_body_points_and_is_added_with_its_weight():
    out = _out(shared=False)
    fine = out["fine"].clone().requires_grad_(True)
    body_chamfer_cdp(fine, out["gt"]).sum().backward()
    plane = out["gt"][..., 1].mean(1, keepdim=True)
    behind = fine.detach()[..., 1] > plane
    assert behind.any() and (~behind).any()
    assert torch.all(fine.grad[behind] == 0) and torch.any(fine.grad[~behind] != 0)
    plain, _ = completion_loss(out, alpha=0.1)
    weighted, parts = completion_loss(out, alpha=0.1, body_weight=2.0)
    term = body_chamfer_cdp(out["fine"], out["gt"]).mean()
    assert float(weighted) == pytest.approx(float(plain) + 2.0 * float(term), rel=1e-6)
    assert parts["cd_fine_body"] == pytest.approx(float(term))
    assert "cd_fine_body" not in completion_loss(out, alpha=0.1)[1]


def test_body_term_of_a_sample_without_body_points_is_zero():
    gt = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    pred = torch.tensor([[[0.0, 2.0, 0.0], [0.0, 3.0, 0.0]]])     # all behind the truth's centroid
    assert float(body_chamfer_cdp(pred, gt)[0]) == 0.0
    assert np.isfinite(float(body_chamfer_cdp(gt, gt)[0]))


def test_train_config_validation():
    with pytest.raises(ValueError, match="train.batch_size"):
        TrainConfig(data="x.h5", batch_size=0).validate()
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="train.body_weight"):
            TrainConfig(data="x.h5", body_weight=bad).validate()
