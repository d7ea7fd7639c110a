"""Data-parallel training: two gloo processes on the CPU train the network one process trains."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from usx_stream.completion.checkpoint import load_checkpoint
from usx_stream.train import distributed
from usx_stream.train.config import TrainConfig
from usx_stream.train.loop import train


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, ports: list[int], cfgs: list[dict]) -> None:
    """One torchrun-like process: the environment torchrun sets, then the library's own entry point."""
    import os

    for port, cfg_dict in zip(ports, cfgs):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                          WORLD_SIZE=str(world), GLOO_SOCKET_IFNAME="lo")
        result = train(TrainConfig(**cfg_dict), progress=False)
        Path(cfg_dict["out"], f"rank{rank}.json").write_text(json.dumps({"losses": result.losses,
                                                                         "rank": result.rank, "step": result.step}))


def _difference(a_path: Path, b_path: Path) -> tuple[float, float]:
    """(||a - b|| / ||a||, max |a - b|) over every parameter of two checkpoints."""
    a, b = load_checkpoint(a_path)[0].state_dict(), load_checkpoint(b_path)[0].state_dict()
    d = torch.cat([(a[k].double() - b[k].double()).flatten() for k in a])
    return float(d.norm() / torch.cat([a[k].double().flatten() for k in a]).norm()), float(d.abs().max())


def test_two_gloo_processes_match_one_process(tiny_pairs, tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    # Global batch 4 (2 per process) over 3 epochs of 1 step; augmentation, dropout and latent draws all on;
    # validation on 3 samples, split 2 + 1 over the two processes.
    common = dict(data=str(tiny_pairs), val=str(tiny_pairs), val_samples=3, batch_size=4, lr=1e-3, seed=5,
                  threads=1, augment_rotate_deg=10.0, augment_shift_mm=2.0, augment_mirror=True)
    # float64: the reference that shows the data order, noise, loss reduction and gradient averaging are
    # those of one process; float32 (paper's lr): equal to rounding, amplified by near-ties and Adam.
    runs = {"float64": dict(common, dtype="float64", epochs=3), "float32": dict(common, lr=1e-4, epochs=2)}
    one = {k: train(TrainConfig(out=str(tmp_path / k / "one"), **c), progress=False) for k, c in runs.items()}
    cfgs = [dict(c, out=str(tmp_path / k / "two")) for k, c in runs.items()]
    mp.spawn(_worker, args=(2, [_free_port(), _free_port()], cfgs), nprocs=2, join=True)

    tolerance = {"float64": dict(loss=1e-10, norm=1e-8, max=1e-7), "float32": dict(loss=1e-5, norm=1e-3, max=1e-2)}
    for kind, tol in tolerance.items():
        single, two = tmp_path / kind / "one", tmp_path / kind / "two"
        ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert [r["step"] for r in ranks] == [one[kind].step] * 2 and [r["rank"] for r in ranks] == [0, 1]
        # Same loss trajectory: every rank reports the global-batch mean.
        for r in ranks:
            assert r["losses"] == pytest.approx(one[kind].losses, rel=tol["loss"], abs=0)
        norm, largest = _difference(single / "last.pt", two / "last.pt")
        assert norm < tol["norm"] and largest < tol["max"], f"{kind}: ||d||/||w|| {norm:.1e}, max |d| {largest:.1e}"
        h1 = json.loads((single / "history.json").read_text())
        h2 = json.loads((two / "history.json").read_text())
        assert [h["step"] for h in h2] == [h["step"] for h in h1] == list(range(1, one[kind].step + 1))
        for x, y in zip(h1, h2):
            assert y["cd_t"] == pytest.approx(x["cd_t"], rel=tol["loss"], abs=0)
        # One log, written by rank 0 only.
        log_text = (two / "train.log").read_text()
        assert log_text.count("training multimodal") == 1 and "2 processes" in log_text
    assert one["float32"].losses[0] != one["float64"].losses[0]  # the dtype option does take effect


def test_noise_of_a_sample_does_not_depend_on_the_split():
    """The per-sample draws GlobalBatchNoise makes: rank r's rows of each block of the global draw."""
    x = torch.zeros(2 * 4, 6)  # two blocks (as posterior + prior rows) of a global batch of 4

    def draws(ctx, rows):
        with distributed.GlobalBatchNoise(seed=1, step=7, global_batch=4, ctx=ctx):
            return (torch.randn_like(x[:rows]), torch.nn.functional.dropout(torch.ones(rows, 6), 0.5, True))

    full_n, full_d = draws(distributed.DistContext(), 8)
    for rank in (0, 1):
        n, d = draws(distributed.DistContext(rank=rank, world_size=2), 4)
        mine = [i for blk in (0, 1) for i in range(blk * 4 + 2 * rank, blk * 4 + 2 * rank + 2)]
        torch.testing.assert_close(n, full_n[mine], rtol=0, atol=0)
        torch.testing.assert_close(d, full_d[mine], rtol=0, atol=0)
    assert set(full_d.unique().tolist()) == {0.0, 2.0}
    with pytest.raises(RuntimeError, match="does not make per sample"):
        with distributed.GlobalBatchNoise(seed=1, step=0, global_batch=4, ctx=distributed.DistContext()):
            torch.rand(3)


def test_devices_backends_and_batch_checks(tiny_pairs, tmp_path, monkeypatch):
    assert distributed.world_from_env({}) == (0, 1, 0)
    assert distributed.world_from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (1, 4, 1)
    with pytest.raises(ValueError, match="not a valid process"):
        distributed.world_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    assert distributed.rank_device("cuda", 3, 4) == "cuda:3" and distributed.rank_device("cpu", 3, 4) == "cpu"
    assert distributed.rank_device("cuda:1", 0, 1) == "cuda:1"
    with pytest.raises(ValueError, match="one GPU"):
        distributed.rank_device("cuda:1", 0, 2)
    assert distributed.choose_backend(torch.device("cpu")) == "gloo"
    assert distributed.choose_backend(torch.device("cuda", 0)) == "nccl"
    assert distributed.choose_backend(torch.device("cuda", 0), "gloo") == "gloo"
    with pytest.raises(ValueError, match="nccl needs CUDA"):
        distributed.choose_backend(torch.device("cpu"), "nccl")
    with pytest.raises(ValueError, match="dist_backend"):
        TrainConfig(data="x.h5", dist_backend="mpi").validate()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="multiple of the 2 processes"):
        train(TrainConfig(data=str(tiny_pairs), out=str(tmp_path), batch_size=3), progress=False)
