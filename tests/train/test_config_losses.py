"""Training configuration parsing and the loss of DESIGN §4."""

from __future__ import annotations

import pytest
import torch

from usx_stream.metrics import chamfer_cdp
from usx_stream.train.config import TrainConfig, load_train_config
from usx_stream.train.losses import alpha_for_epoch, completion_loss


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


def test_train_config_validation():
    with pytest.raises(ValueError, match="train.batch_size"):
        TrainConfig(data="x.h5", batch_size=0).validate()
