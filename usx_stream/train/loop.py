"""The training loop: Adam, step decay, α schedule, validation by CD_t, checkpoints, resume, time budget.

Files in ``cfg.out``:

- ``last.pt`` / ``best.pt``: model checkpoints (``completion.checkpoint`` format; ``extra`` records the
  epoch, step, validation metrics and the training configuration); ``best.pt`` has the lowest validation
  CD_t so far;
- ``state.pt``: optimiser, scheduler and random-generator state for ``resume``;
- ``train.log``: the log of every run into this folder; ``history.json``: every validation.

Run under ``torchrun`` it trains data-parallel over the processes, equal to one process with the same
``batch_size`` (the global batch); :mod:`usx_stream.train.distributed` gives the conventions. Only rank 0
writes these files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..metrics import calc_cd
from . import distributed
from .config import TrainConfig
from .augment import augment_batch
from .data import read_pairs_many
from .losses import alpha_for_epoch, completion_loss
from .network_io import frame_shift, model_inputs, predict, validate

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Outcome of :func:`train`: paths, counters and the best validation CD_t (raw, not ×10⁴)."""

    best_path: Path
    last_path: Path
    epoch: int
    step: int
    best_cd_t: float
    seconds: float
    stopped_by_budget: bool
    losses: list[float] = field(default_factory=list)
    """Total loss of every step of this run (mean over the global batch)."""
    rank: int = 0
    """This process's rank (0 in a single-process run): only rank 0 wrote files."""


def model_config(cfg: TrainConfig):
    """The ``ModelConfig`` preset of ``cfg`` for its variant."""
    from ..completion.nets import ModelConfig

    preset = ModelConfig.small if cfg.model == "small" else ModelConfig.paper
    return preset(multimodal=cfg.variant == "multimodal")


def _attach_log(out: Path) -> logging.Handler:
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    logging.getLogger("usx_stream").addHandler(handler)
    if logging.getLogger("usx_stream").getEffectiveLevel() > logging.INFO:
        logging.getLogger("usx_stream").setLevel(logging.INFO)
    return handler


def resolve_device(name: str) -> torch.device:
    """The torch device of ``train.device``; a clear error when CUDA is asked for and absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device: {name!r} asked for, but torch {torch.__version__} sees no CUDA device")
    return torch.device(name)


class _Run:
    """Mutable state of one training run (model, optimiser, counters); single-threaded."""

    def __init__(self, cfg: TrainConfig, *, resume: bool, ctx: distributed.DistContext | None = None,
                 device: torch.device | None = None) -> None:
        from ..completion.nets import build_model

        self.cfg = cfg
        self.ctx = ctx or distributed.DistContext()
        self.out = Path(cfg.out)
        self.device = device or resolve_device(cfg.device)
        self.dtype = getattr(torch, cfg.dtype)
        self.model_cfg = model_config(cfg)
        self.mm_per_unit = 50.0  # replaced by the training file's value
        torch.manual_seed(cfg.seed)
        # Augmentation draws from its own CPU stream: the same run on CPU and GPU sees the same motions.
        self.augment_rng = torch.Generator().manual_seed(cfg.seed + 1)
        self.net = build_model(self.model_cfg)
        if cfg.init and not resume:
            self._initialise_from(cfg.init)
        self.net = self.net.to(device=self.device, dtype=self.dtype).train()
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=cfg.decay_every, gamma=cfg.lr_decay)
        self.epoch, self.step, self.step_in_epoch = 0, 0, 0
        self.bad_steps = 0
        self.best = math.inf
        self.history: list[dict] = []
        self.losses: list[float] = []
        self.seconds = 0.0
        if resume:
            self._restore()
        # The module that trains (DDP in a multi-process run); ``net`` is the plain network everywhere else.
        self.model = distributed.wrap(self.net, self.ctx, self.device)

    def _initialise_from(self, init: str) -> None:
        from ..completion import checkpoint

        path = checkpoint.default_path(self.cfg.variant) if init == "default" else Path(init)
        if not path.is_file():
            raise ValueError(f"train.init: checkpoint not found: {path}")
        net, model_cfg, _ = checkpoint.load_checkpoint(path)
        if model_cfg != self.model_cfg:
            raise ValueError(f"train.init: {path} holds a different model configuration than variant "
                             f"{self.cfg.variant!r} / model {self.cfg.model!r} ask for")
        self.net.load_state_dict(net.state_dict())
        log.info("initialised from %s", path)

    def _restore(self) -> None:
        from ..completion.checkpoint import load_checkpoint, read_torch_file

        last, state_path = self.out / "last.pt", self.out / "state.pt"
        if not (last.is_file() and state_path.is_file()):
            raise ValueError(f"resume: no last.pt/state.pt in {self.out}")
        net, model_cfg, _ = load_checkpoint(last, map_location=self.device)
        if model_cfg != self.model_cfg:
            raise ValueError(f"resume: {last} holds a different model configuration than variant/model ask for")
        self.net.load_state_dict(net.state_dict())
        state = read_torch_file(state_path, "training state", map_location=self.device)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if "augment_rng" in state:
            self.augment_rng.set_state(state["augment_rng"].cpu())
        self.epoch, self.step, self.step_in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
        self.best, self.seconds = state["best_cd_t"], state["seconds"]
        self.history = json.loads(state["history"])
        log.info("resumed from %s at epoch %d step %d (best CD_t %.3f e-4)", last, self.epoch, self.step,
                 self.best * 1e4)

    def save(self, metrics: dict | None) -> None:
        """Track the best validation; rank 0 writes the checkpoints, ``state.pt`` and ``history.json``."""
        improved = metrics is not None and metrics["cd_t"] < self.best
        if improved:
            self.best = metrics["cd_t"]
        if not self.ctx.is_main:
            return
        with _interrupts_deferred():  # Ctrl-C between last.pt and state.pt would leave a run --resume cannot take
            self._write(metrics, improved)

    def _write(self, metrics: dict | None, improved: bool) -> None:
        from ..completion.checkpoint import save_checkpoint

        extra = {"epoch": self.epoch, "step": self.step, "seconds": round(self.seconds, 1),
                 "train_config": self.cfg.to_dict(), "val": metrics or {}}
        save_checkpoint(self.out / "last.pt", self.net, self.model_cfg, extra)
        if improved:
            save_checkpoint(self.out / "best.pt", self.net, self.model_cfg, extra)
            log.info("new best: CD_t %.3f e-4 at step %d", self.best * 1e4, self.step)
        elif metrics is None or not (self.out / "best.pt").is_file():
            save_checkpoint(self.out / "best.pt", self.net, self.model_cfg, extra)
        torch.save({"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                    "torch_rng": torch.get_rng_state(), "augment_rng": self.augment_rng.get_state(), "epoch": self.epoch, "step": self.step,
                    "step_in_epoch": self.step_in_epoch, "best_cd_t": self.best, "seconds": self.seconds,
                    "history": json.dumps(self.history)}, self.out / "state.pt")
        (self.out / "history.json").write_text(json.dumps(self.history, indent=1))

    def train_step(self, partial, labelmap, complete) -> dict[str, float]:
        """One optimiser step on a *global* batch ((B, n, 3) each; every rank passes the same one).

        The whole batch is augmented (the same draws on every rank), this rank keeps its rows, and the
        network's random draws are made per sample (:class:`~usx_stream.train.distributed.GlobalBatchNoise`),
        so the step is the same for any world size. Returns the loss parts averaged over the global batch.
        """
        cfg, ctx = self.cfg, self.ctx
        b = partial.shape[0]
        partial, labelmap, complete = augment_batch(
            [partial, labelmap, complete], rotate_deg=cfg.augment_rotate_deg,
            shift=cfg.augment_shift_mm / self.mm_per_unit, mirror=cfg.augment_mirror, generator=self.augment_rng,
            scale=cfg.augment_scale, size=cfg.augment_size,
            width=cfg.augment_width, warp=cfg.augment_warp_mm / self.mm_per_unit)
        rows = ctx.rows(b)
        partial, complete = partial[rows], complete[rows]
        labelmap = None if labelmap is None else labelmap[rows]
        with distributed.GlobalBatchNoise(seed=cfg.seed, step=self.step, global_batch=b, ctx=ctx):
            out = self.model(partial, labelmap, complete)
        loss, parts = completion_loss(out, alpha=alpha_for_epoch(self.epoch), chunk=self.cfg.chunk,
                                      body_weight=cfg.body_weight)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the gradients over the ranks here
        if ctx.enabled:  # each rank's parts are means over equally many rows: their mean is the global one
            keys = list(parts)
            summed = ctx.all_reduce_sum(torch.tensor([parts[k] for k in keys], dtype=torch.float64))
            parts = {k: float(v) / ctx.world_size for k, v in zip(keys, summed)}
        grads_ok = all(torch.isfinite(p.grad).all() for p in self.net.parameters() if p.grad is not None)
        if math.isfinite(parts["total"]) and grads_ok:
            self.opt.step()
            self.bad_steps = 0
        else:
            # One bad batch (e.g. a degenerate latent draw) must not end a long run; a streak must.
            self.bad_steps += 1
            log.warning("step %d: non-finite loss or gradient, update skipped (%s)", self.step, parts)
            if self.bad_steps >= 10:
                raise FloatingPointError(f"training diverged: 10 non-finite steps in a row at step {self.step}")
        self.step += 1
        self.step_in_epoch += 1
        self.losses.append(parts["total"])
        return parts


def _batch_order(n: int, cfg: TrainConfig, epoch: int) -> np.ndarray:
    """Sample order of ``epoch``: a permutation that depends only on the seed and the epoch."""
    return np.random.default_rng([cfg.seed, epoch]).permutation(n)


@contextlib.contextmanager
def _interrupts_deferred():
    """Hold a SIGINT (Ctrl-C) that arrives inside the block until it is done, then raise KeyboardInterrupt.
    Off the main thread (no signal handlers there) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train a completion network as ``cfg`` says (see the module docstring for the files written).

    Under ``torchrun`` every process calls this; they train one network data-parallel
    (:mod:`usx_stream.train.distributed`) and leave the process group before returning.
    """
    cfg.validate()
    rank, world, local = distributed.world_from_env()
    if cfg.batch_size % world:
        raise ValueError(f"train.batch_size: the global batch {cfg.batch_size} must be a multiple of the "
                         f"{world} processes")
    device = resolve_device(distributed.rank_device(cfg.device, local, world))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = distributed.init(device, backend=cfg.dist_backend)
    try:
        return _train(cfg, ctx, device, resume=resume, progress=progress)
    finally:
        distributed.shutdown(ctx)


def _train(cfg: TrainConfig, ctx: distributed.DistContext, device: torch.device, *, resume: bool,
           progress: bool) -> TrainResult:
    from tqdm import tqdm

    out = Path(cfg.out)
    package_log = logging.getLogger("usx_stream")
    level = package_log.level
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        handler = _attach_log(out)
    else:  # one log for the run: the other ranks report only warnings
        handler = None
        package_log.setLevel(logging.WARNING)
    ctx.barrier()  # the output folder exists before any rank looks into it
    try:
        run = _Run(cfg, resume=resume, ctx=ctx, device=device)
        train_set = read_pairs_many(cfg.data)
        run.mm_per_unit = train_set.mm_per_unit
        x_tr, lm_tr = model_inputs(train_set, run.model_cfg, cfg.data)
        shift = frame_shift(train_set, run.model_cfg)[:, None]
        gt_tr = torch.from_numpy(train_set.complete[:, :cfg.gt_points or None] - shift)
        # The whole training set fits in device memory (~30 MB for 1000 vertebrae): no loader needed.
        x_tr, gt_tr = x_tr.to(run.device, run.dtype), gt_tr.to(run.device, run.dtype)
        lm_tr = None if lm_tr is None else lm_tr.to(run.device, run.dtype)
        if gt_tr.shape[1] < run.model_cfg.num_partial:
            raise ValueError(f"train.gt_points: the model needs at least {run.model_cfg.num_partial} ground-truth "
                             f"points, got {gt_tr.shape[1]}")
        val = _load_val(cfg, run.model_cfg, run.device, run.dtype)
        n_batches = len(train_set) // cfg.batch_size
        if n_batches < 1:
            raise ValueError(f"train.batch_size: {cfg.batch_size} exceeds the {len(train_set)} training samples")
        log.info("training %s (%s): %d samples, %d batches/epoch of %d (%d per process, %d processes), config %s",
                 cfg.variant, cfg.model, len(train_set), n_batches, cfg.batch_size, cfg.batch_size // ctx.world_size,
                 ctx.world_size, cfg.to_dict())
        if cfg.init and run.step == 0:
            # Fine-tuning: the starting weights are a candidate too, so best.pt is never worse than them.
            _validate_and_save(run, val)
        bar = tqdm(total=cfg.epochs * n_batches, initial=run.step, desc=f"train {cfg.variant}",
                   disable=not (progress and ctx.is_main))
        stopped = _epochs(run, (x_tr, lm_tr, gt_tr), val, n_batches, bar)
        bar.close()
        return TrainResult(out / "best.pt", out / "last.pt", run.epoch, run.step, run.best, run.seconds, stopped,
                           losses=run.losses, rank=ctx.rank)
    finally:
        if handler is not None:
            package_log.removeHandler(handler)
            handler.close()
        package_log.setLevel(level)


def _load_val(cfg: TrainConfig, model_cfg, device: torch.device, dtype: torch.dtype):
    if not cfg.val:
        return None
    arrays = read_pairs_many(cfg.val)
    n = cfg.val_samples or len(arrays)
    partial, labelmap = model_inputs(arrays, model_cfg, cfg.val)
    complete = torch.from_numpy(arrays.complete - frame_shift(arrays, model_cfg)[:, None])
    return tuple(None if t is None else t[:n].to(device, dtype) for t in (partial, labelmap, complete))


def _validate(run: _Run, val) -> dict[str, float]:
    """:func:`validate`, split over the ranks of a multi-process run (rank r takes samples r, r + N, ...)."""
    ctx = run.ctx
    if not ctx.enabled:
        return validate(run.net, *val, chunk=run.cfg.chunk)
    partial, labelmap, complete = val
    idx = torch.arange(ctx.rank, len(partial), ctx.world_size, device=partial.device)
    keys = ("cd_p", "cd_t", "f1")
    sums = torch.zeros(len(keys) + 1, dtype=torch.float64)
    if len(idx):
        fine = predict(run.net, partial[idx], None if labelmap is None else labelmap[idx])
        res = calc_cd(fine, complete[idx], chunk=run.cfg.chunk)
        sums = torch.tensor([float(res[k].double().sum()) for k in keys] + [float(len(idx))], dtype=torch.float64)
    sums = ctx.all_reduce_sum(sums)
    return {k: float(sums[i] / sums[-1]) for i, k in enumerate(keys)}


def _validate_and_save(run: _Run, val) -> None:
    metrics = None
    if val is not None:
        metrics = _validate(run, val)
        run.history.append({"epoch": run.epoch, "step": run.step, "seconds": round(run.seconds, 1), **metrics})
        log.info("validation at epoch %d step %d: CD_t %.3f e-4, CD_p %.3f e-2, F1 %.3f", run.epoch, run.step,
                 metrics["cd_t"] * 1e4, metrics["cd_p"] * 1e2, metrics["f1"])
    run.save(metrics)


def _epochs(run: _Run, train_tensors, val, n_batches: int, bar) -> bool:
    """Run epochs until ``cfg.epochs`` or the time budget; True when the budget stopped it."""
    cfg = run.cfg
    x_tr, lm_tr, gt_tr = train_tensors
    budget_s = cfg.max_minutes * 60.0
    start, base = time.perf_counter(), run.seconds
    while run.epoch < cfg.epochs:
        order = _batch_order(len(x_tr), cfg, run.epoch)
        while run.step_in_epoch < n_batches:
            # The global batch: every rank takes the same one and keeps its rows in train_step.
            idx = torch.from_numpy(order[run.step_in_epoch * cfg.batch_size:(run.step_in_epoch + 1) * cfg.batch_size]).to(run.device)
            parts = run.train_step(x_tr[idx], None if lm_tr is None else lm_tr[idx], gt_tr[idx])
            run.seconds = base + time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(loss=f"{parts['total']:.4f}", cd=f"{parts['cd_coarse']:.4f}")
            if run.step % 10 == 0:
                log.info("epoch %d step %d: %s", run.epoch, run.step, {k: round(v, 5) for k, v in parts.items()})
            if cfg.val_every and run.step % cfg.val_every == 0:
                _validate_and_save(run, val)
            # All ranks stop together (each measures its own time).
            if budget_s and run.ctx.any(run.seconds >= budget_s):
                log.info("time budget of %.1f min reached at epoch %d step %d", cfg.max_minutes, run.epoch, run.step)
                _validate_and_save(run, val)
                return True
        run.epoch += 1
        run.step_in_epoch = 0
        run.sched.step()
        _validate_and_save(run, val)
    return False
