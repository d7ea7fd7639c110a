"""Training: the loss falls on a fixed batch, checkpoints load back, resume continues exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from usx_stream.completion.checkpoint import load_checkpoint
from usx_stream.train.config import TrainConfig
from usx_stream.train.data import read_pairs
from usx_stream.train.loop import _Run, train
from usx_stream.train.network_io import model_inputs, predict


@pytest.mark.parametrize("body_weight", [0.0, 1.0])
def test_loss_decreases_on_a_fixed_batch(tiny_pairs, tmp_path, body_weight):
    cfg = TrainConfig(data=str(tiny_pairs), out=str(tmp_path), lr=1e-3, seed=0, body_weight=body_weight).validate()
    run = _Run(cfg, resume=False)
    arrays = read_pairs(tiny_pairs)
    partial, labelmap = model_inputs(arrays, run.model_cfg, "tiny")
    batch = (partial[:2], labelmap[:2], torch.from_numpy(arrays.complete[:2]))
    steps = [run.train_step(*batch) for _ in range(3)]
    losses = [p["total"] for p in steps]
    assert all(np.isfinite(losses))
    assert ("cd_fine_body" in steps[0]) == (body_weight > 0)
    assert losses[-1] < losses[0]
    assert run.step == 3


def _state(path):
    net, _, extra = load_checkpoint(path)
    return net.state_dict(), extra


def test_checkpoints_round_trip_and_resume_is_exact(tiny_pairs, tmp_path):
    common = dict(data=str(tiny_pairs), val=str(tiny_pairs), val_samples=2, batch_size=2, lr=1e-3, seed=3)
    straight = train(TrainConfig(out=str(tmp_path / "a"), epochs=2, **common), progress=False)
    assert straight.step == 4 and straight.epoch == 2 and not straight.stopped_by_budget
    first = train(TrainConfig(out=str(tmp_path / "b"), epochs=1, **common), progress=False)
    assert first.step == 2
    resumed = train(TrainConfig(out=str(tmp_path / "b"), epochs=2, **common), resume=True, progress=False)
    assert resumed.step == 4
    a, extra_a = _state(tmp_path / "a" / "last.pt")
    b, _ = _state(tmp_path / "b" / "last.pt")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert extra_a["epoch"] == 2 and extra_a["train_config"]["seed"] == 3
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [h["step"] for h in history] == [2, 4]
    best = min(history, key=lambda h: h["cd_t"])
    assert resumed.best_cd_t == pytest.approx(best["cd_t"])
    # best.pt reproduces the completions of the network that was saved.
    net, model_cfg, extra_best = load_checkpoint(tmp_path / "b" / "best.pt")
    assert extra_best["step"] == best["step"]
    arrays = read_pairs(tiny_pairs)
    partial, labelmap = model_inputs(arrays, model_cfg, "tiny")
    out = predict(net, partial[:2], labelmap[:2])
    assert out.shape == (2, model_cfg.num_out, 3) and torch.isfinite(out).all()
    assert (tmp_path / "b" / "train.log").read_text().count("resumed from") == 1


def test_time_budget_stops_and_saves(tiny_pairs, tmp_path):
    cfg = TrainConfig(data=str(tiny_pairs), out=str(tmp_path), epochs=50, batch_size=2, max_minutes=1e-4,
                      variant="us_only")
    result = train(cfg, progress=False)
    assert result.stopped_by_budget and result.step == 1
    _, model_cfg, _ = load_checkpoint(tmp_path / "best.pt")
    assert not model_cfg.multimodal


def test_resume_without_a_run_is_an_error(tiny_pairs, tmp_path):
    with pytest.raises(ValueError, match="resume"):
        train(TrainConfig(data=str(tiny_pairs), out=str(tmp_path)), resume=True, progress=False)


def test_us_only_inputs_are_centred_on_the_partial_cloud(tiny_pairs):
    from usx_stream.completion.nets import ModelConfig
    from usx_stream.train.network_io import frame_shift

    arrays = read_pairs(tiny_pairs)
    us, mm = ModelConfig.small(multimodal=False), ModelConfig.small(multimodal=True)
    partial, labelmap = model_inputs(arrays, us, "tiny")
    assert labelmap is None
    # As completion.prepare does at inference without an X-ray: the partial's bounding-box middle is 0.
    middle = (partial.amin(dim=1) + partial.amax(dim=1)) / 2
    torch.testing.assert_close(middle, torch.zeros_like(middle), atol=1e-6, rtol=0)
    shift = frame_shift(arrays, us)
    np.testing.assert_allclose(partial.numpy() + shift[:, None], arrays.partial[:, :us.num_partial], atol=1e-6)
    # The multimodal frame is the file's frame (partial + labelmap box).
    assert not frame_shift(arrays, mm).any()
    p_mm, _ = model_inputs(arrays, mm, "tiny")
    np.testing.assert_array_equal(p_mm.numpy(), arrays.partial[:, :mm.num_partial])


def test_ctrl_c_inside_a_save_waits_for_the_save_then_stops():
    """last.pt and state.pt are written together or not at all: the interrupt is held until both are."""
    import os
    import signal

    from usx_stream.train.loop import _interrupts_deferred

    done, before = [], signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever an earlier test left: Python's own
    with pytest.raises(KeyboardInterrupt):
        with _interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("last.pt")   # a real interrupt would have stopped here
            done.append("state.pt")
    assert done == ["last.pt", "state.pt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back as it was
    signal.signal(signal.SIGINT, before)


@pytest.mark.slow
def test_ctrl_c_ends_a_run_in_one_line_and_resume_continues_it(tiny_pairs, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "usx_stream.cli", "train", "--data", str(tiny_pairs), "--out", str(tmp_path / "r"),
           "--model", "small", "--epochs", "1000", "--batch-size", "2", "--val-every", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120  # the first validation writes state.pt; nothing signals it
    while not (tmp_path / "r" / "state.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("usx-stream train: interrupted; ") and "--resume" in err
    done = subprocess.run(cmd + ["--resume", "--max-minutes", "0.05"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stderr
