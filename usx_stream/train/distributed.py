"""Data-parallel training over several processes (``torchrun``), equal to one process with the same batch.

Run it with ``torchrun`` (``python -m torch.distributed.run``), which sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` for every process::

    torchrun --nproc-per-node 4 -m usx_stream.train --config train.toml --device cuda

Without those variables (or with ``WORLD_SIZE=1``) training is the plain single-process loop.

Conventions (what makes N processes train the same network as one):

- **Batch**: ``train.batch_size`` is the *global* batch. Every process builds the same global batch (same
  epoch permutation, :func:`usx_stream.train.loop._batch_order`), applies the same augmentation to all of
  it (one CPU generator, same seed on every rank) and keeps the contiguous rows
  ``[rank * B/N, (rank + 1) * B/N)``; ``batch_size`` must be a multiple of the world size. This is the
  deterministic sharding a ``DistributedSampler`` would give, done per batch so the data order is the
  single-process one.
- **Gradients**: each process's loss is the mean over its rows; DDP averages the gradients over the
  processes, which is the mean over the global batch (every rank has the same number of rows).
- **Random draws inside the network** (the VAE's latent samples, RENet's dropout) come from
  :class:`GlobalBatchNoise`: each draw is made for the whole global batch from a generator seeded by
  ``(seed, step)`` and cut to the process's rows, so sample *i* of step *s* gets the same noise whatever
  the world size. The network has no batch normalisation, so nothing else couples the samples of a batch.
- **Seeds**: every rank uses the same ``train.seed`` (initial weights, batch order, augmentation, noise);
  the rank only selects rows. DDP also broadcasts rank 0's weights when it wraps the model.
- **Outputs**: only rank 0 writes checkpoints, ``train.log``, ``history.json`` and prints the result;
  validation is split over the ranks (rank *r* takes samples ``r, r + N, ...``) and its sums all-reduced.
- **Backend**: NCCL when the device is CUDA, gloo on the CPU (``train.dist_backend`` overrides); each
  process uses ``cuda:LOCAL_RANK``. Every rank reads the data files and, on ``--resume``, ``last.pt`` and
  ``state.pt`` from ``train.out``: the folder must be shared (one machine, or a shared file system).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)

BACKENDS = ("auto", "gloo", "nccl")
# Collectives wait this long for a slow rank (e.g. rank 0 writing a checkpoint) before failing.
TIMEOUT = datetime.timedelta(minutes=60)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a data-parallel run; ``world_size == 1`` is the single-process run.

    Attributes
    ----------
    rank, world_size, local_rank : int
        As ``torchrun`` numbers the processes (``local_rank`` picks the GPU on a machine).
    backend : str
        ``"nccl"`` or ``"gloo"``; ``""`` when not distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, global_batch: int) -> slice:
        """This rank's rows of a global batch of ``global_batch`` samples (contiguous, equal sizes)."""
        per = global_batch // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of ``values`` over the ranks (``values`` itself when not distributed)."""
        if not self.enabled:
            return values
        import torch.distributed as dist

        device = torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        buf = values.detach().to(device).clone()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.to(values.device)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a decision all ranks must take together)."""
        if not self.enabled:
            return bool(flag)
        return bool(self.all_reduce_sum(torch.tensor([float(flag)])).item() > 0)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


def world_from_env(environ=None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the variables ``torchrun`` sets; ``(0, 1, 0)`` without them."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ValueError(f"WORLD_SIZE/RANK/LOCAL_RANK: expected integers ({e})") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"RANK {rank} / WORLD_SIZE {world} / LOCAL_RANK {local}: not a valid process number")
    return rank, world, local


def rank_device(name: str, local_rank: int, world_size: int) -> str:
    """``train.device`` for this process: ``cuda`` (or ``auto`` with CUDA) becomes ``cuda:LOCAL_RANK`` in a
    multi-process run; a fixed ``cuda:N`` would put every rank on one GPU and is refused."""
    if world_size == 1:
        return name
    if name.startswith("cuda:"):
        raise ValueError(f"train.device: {name!r} pins every process to one GPU; use 'cuda' (each process "
                         "takes cuda:LOCAL_RANK)")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return f"cuda:{local_rank}"
    return "cpu" if name == "auto" else name


def choose_backend(device: torch.device, requested: str = "auto") -> str:
    """NCCL for CUDA devices, gloo for the CPU, unless ``requested`` names one."""
    if requested not in BACKENDS:
        raise ValueError(f"train.dist_backend: expected one of {BACKENDS}, got {requested!r}")
    if requested != "auto":
        if requested == "nccl" and device.type != "cuda":
            raise ValueError("train.dist_backend: nccl needs CUDA devices; use gloo on the CPU")
        return requested
    return "nccl" if device.type == "cuda" else "gloo"


def init(device: torch.device, *, backend: str = "auto", environ=None) -> DistContext:
    """Join the process group ``torchrun`` describes (nothing to do for a single process).

    Parameters
    ----------
    device : torch.device
        This process's training device (:func:`rank_device`); CUDA devices are made current.
    backend : str, keyword-only
        ``"auto"``, ``"gloo"`` or ``"nccl"`` (:func:`choose_backend`).
    """
    rank, world, local = world_from_env(environ)
    if world == 1:
        return DistContext()
    import torch.distributed as dist

    chosen = choose_backend(device, backend)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(chosen, rank=rank, world_size=world, timeout=TIMEOUT,
                                device_id=device if device.type == "cuda" else None)
    log.info("process %d of %d (%s, %s)", rank, world, chosen, device)
    return DistContext(rank, world, local, chosen)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (after a barrier, so no rank leaves while another still needs it)."""
    if not ctx.enabled:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def wrap(net: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """``net`` in ``DistributedDataParallel`` for a multi-process run, ``net`` itself otherwise.

    Buffers are not synchronised at each forward: the network's buffers are constant tables.
    """
    if not ctx.enabled:
        return net
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # torch >= 2.13 names the option forward_sync_buffers (broadcast_buffers warns); older torch has only the latter
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    sync = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
    return DistributedDataParallel(net, device_ids=ids, **sync)


def noise_seed(seed: int, step: int) -> int:
    """Seed of the in-network random draws of training step ``step`` (a stream apart from the others)."""
    return int(np.random.SeedSequence([int(seed), int(step), 0x6E6F6973]).generate_state(1, np.uint64)[0] >> 1)


# Random functions the network does not use today: a new one must be handled here before training on
# several processes can be equal to one process again, so it fails loudly instead of silently differing.
_UNHANDLED = {torch.rand, torch.randn, torch.randint, torch.randperm, torch.bernoulli, torch.normal,
              torch.multinomial, torch.poisson, torch.randint_like, torch.dropout, torch.Tensor.uniform_,
              torch.Tensor.normal_, torch.Tensor.bernoulli_, torch.Tensor.random_, torch.Tensor.exponential_,
              torch.Tensor.geometric_, torch.Tensor.cauchy_, torch.Tensor.log_normal_, F.alpha_dropout,
              F.feature_alpha_dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.rrelu, F.gumbel_softmax}


class GlobalBatchNoise(TorchFunctionMode):
    """The network's random draws made for the global batch and cut to this process's rows.

    Inside ``with GlobalBatchNoise(...)``, ``torch.randn_like`` / ``torch.rand_like`` and
    ``F.dropout`` (``nn.Dropout``) of a tensor whose first dimension is ``m * local_batch`` rows (``m``
    blocks of this process's samples, as the training forward stacks posterior and prior rows) draw an
    ``(m, global_batch, ...)`` tensor from one CPU generator seeded by :func:`noise_seed` and keep this
    rank's rows of each block. Draws happen in the network's call order, which is the same on every rank.
    Other random functions raise ``RuntimeError``.

    Parameters
    ----------
    seed, step : int, keyword-only
        Training seed and step (the noise of a step does not depend on what ran before: resumes are exact).
    global_batch : int, keyword-only
    ctx : DistContext, keyword-only
    """

    def __init__(self, *, seed: int, step: int, global_batch: int, ctx: DistContext) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(noise_seed(seed, step))
        self.global_batch = global_batch
        self.rows = ctx.rows(global_batch)
        self.local_batch = self.rows.stop - self.rows.start

    def _draw(self, like: torch.Tensor, *, normal: bool, dtype=None) -> torch.Tensor:
        n = like.shape[0] if like.dim() else 0
        if n == 0 or n % self.local_batch:
            raise RuntimeError(f"random draw of shape {tuple(like.shape)}: its rows are not blocks of the "
                               f"{self.local_batch} samples of this process")
        shape = (n // self.local_batch, self.global_batch, *like.shape[1:])
        full = (torch.randn if normal else torch.rand)(shape, generator=self.generator)
        mine = full[:, self.rows].reshape(like.shape)
        return mine.to(device=like.device, dtype=dtype or like.dtype)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.randn_like or func is torch.rand_like:
            return self._draw(args[0], normal=func is torch.randn_like, dtype=kwargs.get("dtype"))
        if func is F.dropout:
            bound = dict(zip(("input", "p", "training", "inplace"), args), **kwargs)
            x, p, training = bound["input"], float(bound.get("p", 0.5)), bound.get("training", True)
            if not training or p == 0.0:
                return x
            keep = self._draw(x, normal=False) >= p  # P(u >= p) = 1 - p for u uniform in [0, 1)
            return x * keep.to(x.dtype) * (1.0 / (1.0 - p))
        if func in _UNHANDLED:
            name = getattr(func, "__qualname__", repr(func))
            raise RuntimeError(f"{name}: a random draw GlobalBatchNoise does not make per sample; handle it "
                               "in usx_stream.train.distributed")
        return func(*args, **kwargs)
