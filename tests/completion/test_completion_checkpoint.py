"""Checkpoints: our format, the shipped defaults, and the public vrcnet_multimodal state-dict layout.

The original layout is rebuilt here from the module definitions of the public code (Conv1d / Conv2d 1x1
layers, ``nn.Sequential(ReLU, Conv2d, ReLU, Conv2d)`` for ``conv_w``, the unused folding and score heads,
``DataParallel``'s ``module.`` prefix and ``{"net_state_dict": ...}``), independently of our loader.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_config, tiny_inputs
from torch import nn

from usx_stream.completion import checkpoint
from usx_stream.completion.nets import build_model
from usx_stream.completion.renet import SAModule


class OrigPCN(nn.Module):
    def __init__(self, w, out):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv1d(3, w[0], 1), nn.Conv1d(w[0], w[1], 1)
        self.conv3, self.conv4 = nn.Conv1d(2 * w[1], w[2], 1), nn.Conv1d(w[2], out, 1)


class OrigRes(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.conv1, self.conv2, self.conv_res = nn.Linear(i, i), nn.Linear(i, o), nn.Linear(i, o)


class OrigSA(nn.Module):
    """Parameters and forward of the original SA_module (B, C, 1, N layout)."""

    def __init__(self, cin, rel, mid, out, share=8, k=16):
        super().__init__()
        self.share, self.k = share, k
        self.conv1, self.conv2 = nn.Conv2d(cin, rel, 1), nn.Conv2d(cin, rel, 1)
        self.conv3 = nn.Conv2d(cin, mid, 1)
        self.conv_w = nn.Sequential(nn.ReLU(), nn.Conv2d(rel * (k + 1), mid // share, 1, bias=False), nn.ReLU(),
                                    nn.Conv2d(mid // share, k * mid // share, 1))
        self.conv_out = nn.Conv2d(mid, out, 1)

    def forward(self, x, idx):
        b, _, _, n = x.shape
        identity = x
        x = F.relu(x)
        flat = x.squeeze(2).transpose(1, 2).reshape(b * n, -1)
        xn = flat[(idx + torch.arange(b).view(-1, 1, 1) * n).reshape(-1)]
        xn = xn.view(b, n, self.k, -1).permute(0, 3, 2, 1)  # B C K N
        x1, x2, x3 = self.conv1(x), self.conv2(xn), self.conv3(xn)
        w = self.conv_w(torch.cat([x1, x2.reshape(b, -1, 1, n)], 1)).view(b, -1, self.k, n)
        out = (w.repeat(1, self.share, 1, 1) * x3).sum(dim=2, keepdim=True)
        return self.conv_out(F.relu(out)) + identity


class OrigSKSA(nn.Module):
    def __init__(self, c, k):
        super().__init__()
        self.sams = nn.ModuleList(OrigSA(c, c // 16, c // 4, c, 8, ki) for ki in k)
        self.fc = nn.Linear(c, max(c // 2, 32))
        self.fcs = nn.ModuleList(nn.Linear(max(c // 2, 32), c) for _ in k)


class OrigSKN(nn.Module):
    def __init__(self, i, o, k):
        super().__init__()
        self.conv1 = nn.Conv2d(i, o, 1, bias=False)
        self.sam = nn.Sequential(OrigSKSA(o, k))
        self.conv2, self.conv_res = nn.Conv2d(o, o, 1, bias=False), nn.Conv2d(i, o, 1, bias=False)


class OrigEncoder(nn.Module):
    def __init__(self, cin, k, c1, glob, hidden, out):
        super().__init__()
        c2, c3, c4 = 2 * c1, 4 * c1, 8 * c1
        self.sam_res1, self.sam_res2 = OrigSKN(cin, c1, k), OrigSKN(c2, c2, k)
        self.sam_res3, self.sam_res4 = OrigSKN(c3, c3, k), OrigSKN(c4, c4, k)
        self.conv5, self.fc1, self.fc2 = nn.Conv2d(c4, glob, 1), nn.Linear(glob, hidden), nn.Linear(hidden, glob)
        self.conv6, self.conv7 = nn.Conv2d(c4 + glob, c4, 1), nn.Conv2d(c3 + c4, c3, 1)
        self.conv8, self.conv9 = nn.Conv2d(c2 + c3, c2, 1), nn.Conv2d(c1 + c2, c1, 1)
        self.conv_out = nn.Conv2d(c1, out, 1)


class OrigDecoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        f = cfg.feature_size
        self.fc1, self.fc2, self.fc3 = nn.Linear(f, f), nn.Linear(f, f), nn.Linear(f, cfg.num_coarse_raw * 3)
        self.encoder = OrigEncoder(6, cfg.knn, cfg.renet_channels, cfg.renet_global, cfg.renet_fc_hidden,
                                   cfg.dense_feature)
        e = cfg.expand_feature
        self.conv_cup1, self.conv_cup2 = nn.Conv1d(cfg.dense_feature, e, 1), nn.Conv1d(e, 3, 1)
        self.conv_s1, self.conv_s2, self.conv_s3 = nn.Conv1d(e, 16, 1), nn.Conv1d(16, 8, 1), nn.Conv1d(8, 1, 1)
        self.expansion2 = nn.Module()
        self.expansion2.conv = nn.Conv1d(e + f + 2, cfg.dense_feature, 1)  # Folding, never run
        self.conv_f1, self.conv_f2 = nn.Conv1d(cfg.dense_feature, e, 1), nn.Conv1d(e, 3, 1)


class OrigModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        f = cfg.feature_size
        self.encoder_pcd, self.encoder_labelmap = OrigPCN(cfg.pcn_widths, f), OrigPCN(cfg.pcn_widths, f)
        self.posterior_infer1, self.posterior_infer2 = OrigRes(f, f), OrigRes(f, 2 * cfg.latent)
        self.prior_infer, self.generator = OrigRes(f, 2 * cfg.latent), OrigRes(cfg.latent, f)
        self.decoder = OrigDecoder(cfg)
        self.feature_selector = nn.Module()
        self.feature_selector.fc1, self.feature_selector.fc2 = nn.Linear(2 * f, 2 * f), nn.Linear(2 * f, f)


def _original_checkpoint(cfg):
    torch.manual_seed(0)
    model = OrigModel(cfg)
    return {"net_state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, model


def test_original_layout_loads_every_parameter():
    cfg = tiny_config(up_ratio=1, num_out=80)
    ckpt, orig = _original_checkpoint(cfg)
    model, got = checkpoint.load_original_state_dict(ckpt, num_partial=cfg.num_partial,
                                                     num_labelmap=cfg.num_labelmap, refine_partial=cfg.num_partial,
                                                     refine_labelmap=cfg.num_labelmap, num_out=96,
                                                     pool_points=cfg.pool_points, pool_k=cfg.pool_k)
    for field in ("feature_size", "num_coarse_raw", "pcn_widths", "renet_channels", "renet_layers", "knn",
                  "renet_global", "renet_fc_hidden", "dense_feature", "expand_feature", "latent", "points_label"):
        assert getattr(got, field) == getattr(cfg, field), field
    assert got.multimodal and got.sampling == "fps"
    ours = model.state_dict()
    for key, value in orig.state_dict().items():
        if key.startswith(("decoder.conv_s", "decoder.conv_f", "decoder.expansion2")):
            assert key not in ours
            continue
        torch.testing.assert_close(ours[key], value.reshape(ours[key].shape), rtol=0, atol=0)
    partial, labelmap = tiny_inputs(got, 2)
    with torch.no_grad():
        assert model(partial, labelmap)["fine"].shape == (2, got.num_out, 3)


def test_original_layout_as_us_only_and_errors(tmp_path):
    cfg = tiny_config(up_ratio=1, num_out=80)
    ckpt, _ = _original_checkpoint(cfg)
    sizes = dict(num_partial=64, refine_partial=64, num_out=96, pool_points=cfg.pool_points, pool_k=4)
    model, got = checkpoint.load_original_state_dict(ckpt, multimodal=False, **sizes)
    assert not got.multimodal and not hasattr(model, "encoder_labelmap")
    path = tmp_path / "network.pth"
    torch.save(ckpt, path)
    assert checkpoint.load_original_checkpoint(path, multimodal=False, **sizes)[1] == got
    broken = {"net_state_dict": dict(ckpt["net_state_dict"])}
    broken["net_state_dict"]["module.decoder.something_new.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="something_new"):
        checkpoint.load_original_state_dict(broken, multimodal=False, **sizes)
    del broken["net_state_dict"]["module.decoder.something_new.weight"]
    del broken["net_state_dict"]["module.decoder.fc2.bias"]
    with pytest.raises(ValueError, match="lacks"):
        checkpoint.load_original_state_dict(broken, multimodal=False, **sizes)


def test_sa_module_matches_original_forward():
    torch.manual_seed(1)
    orig = OrigSA(64, 4, 16, 64, 8, 8)
    ours = SAModule(64, 4, 16, 64, 8, 8)
    ours.load_state_dict({k: v.reshape(ours.state_dict()[k].shape) for k, v in orig.state_dict().items()})
    x = torch.randn(2, 64, 1, 30)
    idx = torch.randint(0, 30, (2, 30, 8))
    expected = orig(x, idx).squeeze(2).transpose(1, 2)
    torch.testing.assert_close(ours(x.squeeze(2).transpose(1, 2), idx), expected, rtol=1e-4, atol=1e-5)


def test_save_load_round_trip(tmp_path, tiny_cfg):
    model = build_model(tiny_cfg).eval()
    path = checkpoint.save_checkpoint(tmp_path / "m.pt", model, tiny_cfg, {"epoch": 3, "seed": 7})
    loaded, cfg, extra = checkpoint.load_checkpoint(path)
    assert cfg == tiny_cfg and extra == {"epoch": 3, "seed": 7} and not loaded.training
    assert checkpoint.state_dict_hash(loaded) == checkpoint.state_dict_hash(model)
    partial, labelmap = tiny_inputs(cfg, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(partial, labelmap)["fine"], model(partial, labelmap)["fine"])
    with pytest.raises(FileNotFoundError, match="nothere"):
        checkpoint.load_checkpoint(tmp_path / "nothere.pt")
    torch.save({"net_state_dict": {}}, tmp_path / "orig.pth")
    with pytest.raises(ValueError, match="load_original_checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "orig.pth")


def test_a_file_that_is_not_a_checkpoint_is_named_as_bad_input(tmp_path, tiny_cfg):
    """Text saved as .pt, and a checkpoint cut short (an interrupted copy), are the user's file at fault."""
    from usx_stream.errors import InputError

    good = checkpoint.save_checkpoint(tmp_path / "m.pt", build_model(tiny_cfg), tiny_cfg, {})
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:2000])
    (tmp_path / "notes.pt").write_text("weights to come\n")
    for name in ("cut.pt", "notes.pt"):
        with pytest.raises(InputError, match=rf"{name}: not a readable completion checkpoint") as info:
            checkpoint.load_checkpoint(tmp_path / name)
        assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="notes.pt: not a readable original checkpoint"):
        checkpoint.load_original_checkpoint(tmp_path / "notes.pt")


def test_hash_changes_with_weights(tiny_cfg):
    model = build_model(tiny_cfg)
    before = checkpoint.state_dict_hash(model)
    with torch.no_grad():
        model.decoder.fc1.bias[0] += 1e-3
    assert checkpoint.state_dict_hash(model) != before


def test_load_default_names_the_missing_file():
    path = checkpoint.default_path("us_only")
    if path.is_file():
        model, cfg, _ = checkpoint.load_default("us_only")
        assert not cfg.multimodal
    else:
        with pytest.raises(FileNotFoundError, match="us_only.pt"):
            checkpoint.load_default("us_only")
    with pytest.raises(ValueError, match="variant"):
        checkpoint.load_default("ct")


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")
def test_original_weights_with_ordered_pooling_export_convertibly():
    from usx_stream.completion import export

    cfg = tiny_config(up_ratio=1, num_out=80)
    ckpt, _ = _original_checkpoint(cfg)
    model, got = checkpoint.load_original_state_dict(
        ckpt, num_partial=64, num_labelmap=32, refine_partial=64, refine_labelmap=32, num_out=96,
        pool_points=cfg.pool_points, pool_k=4, sampling="ordered")
    assert export.unconvertible_ops(export.core_aten(export.export_program(model, batch=1))) == []
