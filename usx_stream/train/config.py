"""Training configuration: a dataclass, read from a TOML ``[train]`` table and/or command-line options.

Example ``train.toml``::

    [train]
    data = "train.h5"
    val = "val.h5"
    variant = "multimodal"      # or "us_only"
    model = "small"             # ModelConfig preset: "small" (CPU) or "paper"
    out = "runs/multimodal"
    epochs = 100
    batch_size = 8              # the global batch: under torchrun each of N processes takes batch_size / N
    lr = 1e-4                   # Adam; the paper's value
    lr_decay = 0.7              # multiply the learning rate ...
    decay_every = 40            # ... every 40 epochs
    max_minutes = 30            # stop (validate, save) after this wall time; 0 = no limit
    val_every = 0               # validate every N steps (0 = once per epoch)
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

VARIANTS = ("multimodal", "us_only")
MODEL_PRESETS = ("small", "paper")


@dataclass
class TrainConfig:
    """Everything a training run needs (see the module docstring for the meaning of each field).

    Attributes
    ----------
    data, val : str
        Training and validation HDF5 files (``val`` empty = no validation: the last model is the best).
    variant : str
        ``"multimodal"`` (partial + X-ray labelmap) or ``"us_only"``.
    model : str
        ``ModelConfig`` preset.
    out : str
        Output folder: ``best.pt``, ``last.pt``, ``state.pt``, ``train.log``, ``history.json``.
    epochs : int
    batch_size : int
        The global batch: a run on N processes (``torchrun``) gives each ``batch_size / N`` samples of it
        (a multiple of N is required) and trains the same network as one process with ``batch_size``
        (:mod:`usx_stream.train.distributed`).
    lr, lr_decay : float
    decay_every : int
        Epochs between learning-rate decays.
    seed : int
        Model initialisation, batch order, latent draws.
    max_minutes : float
        Wall-time budget of this run (0 = none); the run stops after the current step, validates and saves.
    val_every : int
        Steps between validations (0 = at the end of each epoch).
    val_samples : int
        Validate on the first N samples (0 = all).
    threads : int
        torch intra-op threads (0 = torch's default).
    chunk : int
        Row chunk of the chamfer distance (memory).
    gt_points : int
        Ground-truth points per sample used by the training loss (0 = all). The stored points are uniform
        random samples of the surface, so a prefix is a uniform subset; fewer points make each step cheaper
        (the chamfer distances and the network's furthest-point sampling of the ground truth). Validation
        always uses every point.
    device : str
        ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``) or ``"auto"`` (CUDA when available). Checkpoints are saved
        on the CPU whatever the device.
    augment_rotate_deg, augment_shift_mm : float
        Per-sample random rigid motion of each training batch (largest angle in degrees, largest shift per
        axis in mm); 0 = none. See ``train.augment``.
    augment_mirror : bool
        Mirror a random half of each batch left-right.
    augment_scale : float
        Per-axis random scaling of each training sample by up to this fraction (0.08 = ±8 %); 0 = none.
    augment_size : float
        Random scaling of each training sample as a whole (one factor, all axes) by up to this fraction; 0 = none.
    augment_width : float
        Random scaling of each training sample's left-right extent only by up to this fraction; 0 = none.
    augment_warp_mm : float
        Largest displacement of a smooth random warp of each training sample, mm; 0 = none.
    body_weight : float
        Weight of the body-only chamfer term of the fine output in the loss (``train.losses``); 0 = the
        paper's loss.
    init : str
        Start from these weights instead of a random initialisation (fine-tuning): a checkpoint path, or
        ``"default"`` for the shipped checkpoint of ``variant``. The optimiser and counters start afresh.
    dtype : str
        ``"float32"`` (training) or ``"float64"``: a slower reference run whose result is reproducible to
        ~1e-9, e.g. to check that N processes train what one process trains (in float32 the two agree to
        rounding, which near-ties in kNN / furthest-point choices and Adam's normalisation amplify).
        Checkpoints keep the training dtype.
    dist_backend : str
        Process-group backend of a ``torchrun`` run: ``"auto"`` (NCCL on CUDA, gloo on the CPU),
        ``"gloo"`` or ``"nccl"``. Ignored in a single process.
    """

    data: str = ""
    val: str = ""
    variant: str = "multimodal"
    model: str = "small"
    out: str = "runs/completion"
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-4
    lr_decay: float = 0.7
    decay_every: int = 40
    seed: int = 0
    max_minutes: float = 0.0
    val_every: int = 0
    val_samples: int = 0
    threads: int = 0
    chunk: int = 1024
    gt_points: int = 0
    device: str = "cpu"
    augment_rotate_deg: float = 0.0
    augment_shift_mm: float = 0.0
    augment_mirror: bool = False
    augment_scale: float = 0.0
    augment_size: float = 0.0
    augment_width: float = 0.0
    augment_warp_mm: float = 0.0
    body_weight: float = 0.0
    init: str = ""
    dtype: str = "float32"
    dist_backend: str = "auto"

    def validate(self) -> "TrainConfig":
        """Check every field; raise ValueError naming the field and its value."""
        if not self.data:
            raise ValueError("train.data: a training HDF5 file is required")
        if self.variant not in VARIANTS:
            raise ValueError(f"train.variant: expected one of {VARIANTS}, got {self.variant!r}")
        if self.model not in MODEL_PRESETS:
            raise ValueError(f"train.model: expected one of {MODEL_PRESETS}, got {self.model!r}")
        for name in ("epochs", "batch_size", "decay_every", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}: must be >= 1, got {getattr(self, name)!r}")
        for name in ("max_minutes", "val_every", "val_samples", "threads", "gt_points", "augment_rotate_deg",
                     "augment_shift_mm", "augment_warp_mm", "body_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name}: must be >= 0, got {getattr(self, name)!r}")
        for name in ("augment_scale", "augment_size", "augment_width"):
            if not 0 <= getattr(self, name) < 0.5:
                raise ValueError(f"train.{name}: must be in [0, 0.5), got {getattr(self, name)!r}")
        if not math.isfinite(self.body_weight):
            raise ValueError(f"train.body_weight: must be a finite number >= 0, got {self.body_weight!r}")
        if not self.lr > 0:
            raise ValueError(f"train.lr: must be > 0, got {self.lr!r}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"train.lr_decay: must be in (0, 1], got {self.lr_decay!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"train.dtype: expected float32 or float64, got {self.dtype!r}")
        if self.dist_backend not in ("auto", "gloo", "nccl"):
            raise ValueError(f"train.dist_backend: expected auto, gloo or nccl, got {self.dist_backend!r}")
        if not (self.device in ("cpu", "cuda", "auto") or re.fullmatch(r"cuda:\d+", self.device)):
            raise ValueError(f"train.device: expected cpu, cuda, cuda:N or auto, got {self.device!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_train_config(path: str | Path | None = None, **overrides) -> TrainConfig:
    """A validated :class:`TrainConfig` from the ``[train]`` table of a TOML file, then ``overrides``.

    ``overrides`` whose value is None are ignored (unset command-line options).
    """
    import tomllib

    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"train config: file not found: {path}")
        try:
            with path.open("rb") as f:
                doc = tomllib.load(f)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:   # else the message would not name the file
            raise ValueError(f"train config {path}: {e}") from None
        table = doc.get("train", doc)
        if not isinstance(table, dict):
            raise ValueError(f"train config {path}: [train] must be a table")
        values.update(table)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"train.{key}: unknown key (known: {', '.join(sorted(known))})")
        kind = type(getattr(TrainConfig(), key))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
        elif not isinstance(values[key], kind) or (isinstance(value, bool) and kind is not bool):
            raise ValueError(f"train.{key}: expected {kind.__name__}, got {value!r}")
    return TrainConfig(**values).validate()
