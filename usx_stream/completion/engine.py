"""The completion engine: one object that runs the network as fast as the machine allows.

Backends, tried in this order when ``backend="auto"``:

``tensorrt``  torch-tensorrt dynamo compile of the exported network, reduced precision, one engine at the
              largest batch (smaller batches are padded), cached on disk by ``trt_backend.engine_cache_key``;
``compiled``  ``torch.compile(mode="reduce-overhead")``: Inductor kernels replayed as CUDA graphs, one graph
              per batch size 1..max_batch, under fp16/bf16 autocast (neighbour distances stay float32);
``eager``     plain PyTorch on CPU or GPU.

One log line says which backend runs and why each earlier one does not. Shapes are fixed: every vertebra is
resampled to the model's point counts (``normalize.resample_batch``), so graphs are captured once, during the
warm-up at construction, and the first surgical update is not the slow one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from usx_stream.completion import normalize, ops
from usx_stream.completion.nets import CompletionNet, InferenceModule

_LOG = logging.getLogger(__name__)

BACKENDS = ("tensorrt", "compiled", "eager")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_CACHE_DIR = Path(".engine_cache")


@dataclass(frozen=True)
class _Runner:
    name: str
    call: Callable[..., torch.Tensor]  # (partial[, labelmap]) on the device -> (B, num_out, 3)
    batch_sizes: tuple[int, ...]  # batch sizes it accepts; others are padded up
    note: str = ""


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


class CompletionEngine:
    """Run a ``CompletionNet`` for up to ``max_batch`` vertebrae at a time on the best available backend.

    Parameters
    ----------
    model : the network (moved to ``device``, eval mode)
    backend : "auto" or one of ``BACKENDS``; an explicit backend that cannot run raises RuntimeError
    device : "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    precision : "fp32", "fp16" or "bf16"; default fp16 on CUDA, fp32 on CPU (CPU runs fp32 only)
    max_batch : vertebrae per network call (five lumbar vertebrae)
    cache_dir : TensorRT engine cache folder
    warmup : run every batch size once now (captures CUDA graphs, loads kernels)
    error_head : the weights' learned error head (``completion.error_head``), moved to ``device``: the per-point
        uncertainty of ``completion.front.complete_levels(..., error_head=True)``; None: none
    """

    def __init__(self, model: CompletionNet, *, backend: str = "auto", device: str | torch.device | None = "auto",
                 precision: str | None = None, max_batch: int = 5, cache_dir: str | Path | None = None,
                 warmup: bool = True, error_head=None) -> None:
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.device = _resolve_device(device)
        precision = precision or ("fp16" if self.device.type == "cuda" else "fp32")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if self.device.type == "cpu" and precision != "fp32":
            raise ValueError(f"precision {precision!r} needs a CUDA device; the CPU path runs fp32")
        self.precision = precision
        self.max_batch = max_batch
        self.cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
        self.model = model.eval().to(self.device)
        self.cfg = model.cfg
        if error_head is not None and bool(error_head.multimodal) != bool(self.cfg.multimodal):
            raise ValueError(f"error_head: a {'multimodal' if error_head.multimodal else 'US-only'} head for a "
                             f"{'multimodal' if self.cfg.multimodal else 'US-only'} network")
        self.error_head = None if error_head is None else error_head.eval().to(self.device)
        self.not_used: dict[str, str] = {}
        self._runner = self._select(backend)
        _LOG.info("%s", self.describe())
        if warmup:
            self.warmup()

    # -- backend selection -------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return self._runner.name

    def describe(self) -> str:
        """One line: the backend that runs, where, and why the others do not."""
        where = str(self.device)
        if self.device.type == "cuda":
            where += f" ({torch.cuda.get_device_name(self.device)})"
        sizes = self._runner.batch_sizes
        batches = f"batch {sizes[0]}" if len(sizes) == 1 else f"batches {sizes[0]}-{sizes[-1]}"
        line = f"completion backend: {self.backend} on {where}, {self.precision}, {batches}"
        if self._runner.note:
            line += f" ({self._runner.note})"
        for name, why in self.not_used.items():
            line += f"; {name} not used: {why}"
        return line

    def _unavailable(self, name: str) -> str | None:
        if name == "eager":
            return None
        if self.device.type != "cuda":
            return "needs a CUDA device" if name == "tensorrt" else "CUDA graphs need a CUDA device"
        if name == "tensorrt" and importlib.util.find_spec("torch_tensorrt") is None:
            return "torch_tensorrt is not installed"
        if name == "compiled" and importlib.util.find_spec("triton") is None:
            return "Triton (torch.compile's GPU code generator) is not installed"
        return None

    def _select(self, backend: str) -> _Runner:
        order = BACKENDS if backend == "auto" else (backend,)
        for name in order:
            why = self._unavailable(name)
            if why is None:
                try:
                    return getattr(self, f"_build_{name}")()
                except Exception as e:  # a failed build falls back to the next backend, with the reason logged
                    if backend != "auto":
                        raise RuntimeError(f"completion backend {name} failed to build: {e}") from e
                    why = f"build failed: {type(e).__name__}: {e}"
                    _LOG.warning("completion backend %s %s", name, why)
            elif backend != "auto":
                raise RuntimeError(f"completion backend {name} cannot run: {why}")
            self.not_used[name] = why
        raise RuntimeError(f"no completion backend could run: {self.not_used}")

    def _example(self, batch: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        shapes = [(batch, self.cfg.num_partial, 3)]
        if self.cfg.multimodal:
            shapes.append((batch, self.cfg.num_labelmap, 3))
        return [(torch.rand(s, generator=gen) * 2 - 1).to(self.device) for s in shapes]

    def _autocast(self):
        enabled = self.device.type == "cuda" and self.precision != "fp32"
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision], enabled=enabled)

    def _build_eager(self) -> _Runner:
        module = InferenceModule(self.model)

        # On the CPU, kNN by k-d tree (same neighbours, several times faster than topk over full matrices).
        knn_context = ops.tree_knn if self.device.type == "cpu" else contextlib.nullcontext

        def call(*inputs: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), self._autocast(), knn_context():
                return module(*inputs).float()

        return _Runner("eager", call, tuple(range(1, self.max_batch + 1)))

    def _build_compiled(self) -> _Runner:
        # dynamic=None: batch 1 compiles static, the next batch size recompiles once with a symbolic batch that
        # serves 2..max_batch; cudagraph trees then record one CUDA graph per batch size during warm-up.
        compiled = torch.compile(InferenceModule(self.model), mode="reduce-overhead", fullgraph=True, dynamic=None)

        def call(*inputs: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), self._autocast():
                # CUDA-graph outputs live in memory the next replay overwrites: copy them out.
                return compiled(*inputs).float().clone()

        runner = _Runner("compiled", call, tuple(range(1, self.max_batch + 1)), "torch.compile + CUDA graphs")
        runner.call(*self._example(1))  # compile now, so a failure falls back at start-up
        return runner

    def _build_tensorrt(self) -> _Runner:
        from usx_stream.completion.trt_backend import build_or_load

        module, how = build_or_load(self.model, self._example(self.max_batch), precision=self.precision,
                                    cache_dir=self.cache_dir)

        def call(*inputs: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return module(*inputs).float()

        return _Runner("tensorrt", call, (self.max_batch,), how)

    # -- running -----------------------------------------------------------------------------------------
    def warmup(self, repeats: int | None = None) -> None:
        """Run every accepted batch size ``repeats`` times (default: 3 for the compiled backend, whose CUDA
        graphs record on the second call and replay from the third; once otherwise)."""
        repeats = repeats if repeats is not None else (3 if self.backend == "compiled" else 1)
        for batch in self._runner.batch_sizes:
            inputs = self._example(batch)
            for _ in range(repeats):
                self._runner.call(*inputs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run_device(self, partial: torch.Tensor, labelmap: torch.Tensor | None = None) -> torch.Tensor:
        """The network on device tensors in the unit frame.

        (B, num_partial, 3) [and (B, num_labelmap, 3)] -> (B, num_out, 3), float32.

        Batches above ``max_batch`` run in chunks; a batch the backend has no graph for is padded up with
        copies of its last vertebra and the padding is dropped from the result.
        """
        b = partial.shape[0]
        if self.cfg.multimodal and (labelmap is None or labelmap.shape[0] != b):
            raise ValueError(f"labelmap must have {b} rows for a multimodal model, got "
                             f"{None if labelmap is None else labelmap.shape[0]}")
        outputs = []
        for start in range(0, b, self.max_batch):
            chunk = [partial[start:start + self.max_batch]]
            if self.cfg.multimodal:
                chunk.append(labelmap[start:start + self.max_batch])
            n = chunk[0].shape[0]
            size = min(s for s in self._runner.batch_sizes if s >= n)
            if size > n:
                chunk = [torch.cat([x, x[-1:].expand(size - n, -1, -1)]) for x in chunk]
            outputs.append(self._runner.call(*chunk)[:n])
        if not outputs:
            return torch.zeros(0, self.cfg.num_out, 3, device=self.device)
        return torch.cat(outputs)

    def run_device_samples(self, partial: torch.Tensor, labelmap: torch.Tensor | None,
                           eps: torch.Tensor) -> torch.Tensor:
        """The mean completion and K latent draws, one decoder batch of B x (1 + K) per chunk of vertebrae.

        (B, num_partial, 3) [and (B, num_labelmap, 3)] device tensors in the unit frame, ``eps`` (K, B, latent)
        standard normal draws (any device) -> (B, 1 + K, num_out, 3) float32 (row 0: the mean, as
        :meth:`run_device` up to rounding; rows 1..: the draws, :meth:`CompletionNet.mean_and_samples`).

        Runs eager on every backend (k-d tree neighbours on the CPU, the engine's autocast on CUDA): the
        draws are an extra view, not the surface, and a second compiled graph per K is not worth its
        start-up time here.
        """
        b = partial.shape[0]
        if self.cfg.multimodal and (labelmap is None or labelmap.shape[0] != b):
            raise ValueError(f"labelmap must have {b} rows for a multimodal model, got "
                             f"{None if labelmap is None else labelmap.shape[0]}")
        if eps.dim() != 3 or eps.shape[1] != b:
            raise ValueError(f"eps must be (K, {b}, latent), got {tuple(eps.shape)}")
        knn_context = ops.tree_knn if self.device.type == "cpu" else contextlib.nullcontext
        lm = labelmap if self.cfg.multimodal else None
        outputs = []
        with torch.inference_mode(), self._autocast(), knn_context():
            for start in range(0, b, self.max_batch):
                stop = start + self.max_batch
                outputs.append(self.model.mean_and_samples(
                    partial[start:stop], None if lm is None else lm[start:stop],
                    eps[:, start:stop].to(self.device)).float())
        if not outputs:
            return torch.zeros(0, 1 + eps.shape[0], self.cfg.num_out, 3, device=self.device)
        return torch.cat(outputs)

    def complete(self, partials_mm: Sequence[np.ndarray], labelmaps_mm: Sequence[np.ndarray | None] | None = None,
                 *, rotations: Sequence[np.ndarray | None] | None = None, seed: int = 0) -> list[np.ndarray]:
        """Complete vertebrae given in millimetres (:func:`~usx_stream.completion.front.complete_levels`,
        the node's own path, without the body fit).

        Parameters
        ----------
        partials_mm : per vertebra, (N_i, 3) ultrasound bone points, mm
        labelmaps_mm : per vertebra, (M_i, 3) back-projected X-ray labelmap points, mm (multimodal models)
        rotations : per vertebra, optional (3, 3) rotation from the points' axes to the vertebra axes
            (``normalize``)
        seed : seed of the thinning of very large clouds before furthest-point sampling

        Returns
        -------
        list of (num_out, 3) float64 arrays, mm, in the input frame. A vertebra without partial points (or,
        for a multimodal model, without labelmap points) gives a (0, 3) array.
        """
        from usx_stream.completion.front import LevelPoints, complete_levels

        count = len(partials_mm)
        labelmaps = list(labelmaps_mm) if labelmaps_mm is not None else [None] * count
        rots = list(rotations) if rotations is not None else [None] * count
        if len(labelmaps) != count or len(rots) != count:
            raise ValueError(f"labelmaps_mm and rotations must have {count} entries, "
                             f"got {len(labelmaps)} and {len(rots)}")
        levels = [LevelPoints(str(i), normalize.as_points(f"partials_mm[{i}]", partials_mm[i]),
                              None if labelmaps[i] is None else normalize.as_points(f"labelmaps_mm[{i}]", labelmaps[i]),
                              rots[i]) for i in range(count)]
        return [done.points_mm for done in complete_levels(self, levels, seed=seed)]

    @classmethod
    def from_default(cls, variant: str = "multimodal", device: str | torch.device | None = "auto",
                     error_head: bool = True, **kwargs) -> "CompletionEngine":
        """An engine over the packaged weights of ``variant`` (``"multimodal"`` or ``"us_only"``,
        ``checkpoint.load_default``), with their packaged error head unless ``error_head`` is False;
        ``kwargs`` go to the constructor (``backend``, ``precision``, ``max_batch``, ``cache_dir``, ``warmup``)."""
        from usx_stream.completion.checkpoint import load_default, state_dict_hash
        from usx_stream.completion.error_head import load_error_head, packaged_error_head

        model, _, _ = load_default(variant)
        head = (load_error_head(packaged_error_head(variant), completion_hash=state_dict_hash(model))[0]
                if error_head else None)
        return cls(model, device=device, error_head=head, **kwargs)
