"""Where the node computes: ``auto`` launch values resolved against the machine, said in one log line.

``auto`` means: on a machine with CUDA, completion on the GPU in fp16, compounding with the torch
backend on the GPU and meshing with the pure-torch mesher on the GPU; on a CPU-only machine, completion
in fp32 on the CPU, compounding with the numba kernels (the torch backend on a CPU costs ~55 ms a frame
against ~1 ms for numba) and meshing with scipy (the torch mesher on a CPU is ~5x slower). Bone points are
extracted on the compounding device only when that is a GPU. Explicit values are
kept, and a value the machine cannot run (``fp16`` or ``cuda`` without CUDA) is a
:class:`~usx_stream.node.launch.ConfigError` naming the key, raised before anything starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .launch import ConfigError, LaunchConfig

log = logging.getLogger(__name__)


def cuda_available() -> bool:
    """True when torch is importable and sees a CUDA device."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@dataclass(frozen=True)
class ComputeChoice:
    """The concrete values behind the launch file's ``auto`` keys, and why they were chosen."""

    completion_device: str
    precision: str
    compound_backend: str
    compound_device: str
    reason: str
    surface_backend: str = "scipy"
    surface_device: str = "cpu"
    bone_points_device: str = "host"

    def overrides(self) -> dict[str, str]:
        return {"completion.device": self.completion_device, "completion.precision": self.precision,
                "compound.backend": self.compound_backend, "compound.device": self.compound_device,
                "surface.backend": self.surface_backend, "surface.device": self.surface_device,
                "bone.points_device": self.bone_points_device}

    def describe(self) -> str:
        compound = self.compound_backend + (f" on {self.compound_device}" if self.compound_backend == "torch" else "")
        if self.bone_points_device == "compound":
            compound += " (bone points there too)"
        mesh = self.surface_backend + (f" on {self.surface_device}" if self.surface_backend == "torch" else "")
        return (f"compute: completion on {self.completion_device} in {self.precision}, compounding with {compound}, "
                f"meshing with {mesh} ({self.reason})")


def choose_surface(backend: str, device: str, *, cuda: bool) -> tuple[str, str]:
    """Concrete ``surface.backend`` and ``surface.device``: ``auto`` is torch on CUDA when there is one
    (and the device is not pinned to the CPU), scipy otherwise; ConfigError for what cannot run."""
    if device == "cuda" and not cuda:
        raise ConfigError("surface.device: 'cuda' needs a CUDA device and this machine has none; use 'auto' or 'cpu'")
    if backend == "auto":
        backend = "torch" if cuda and device != "cpu" else "scipy"
    if backend == "scipy" and device == "cuda":
        raise ConfigError("surface.device: 'cuda' needs surface.backend = 'torch' or 'auto', got 'scipy'")
    return backend, (device if device != "auto" else ("cuda" if cuda and backend == "torch" else "cpu"))


def choose_compute(cfg: LaunchConfig, *, cuda: bool | None = None) -> ComputeChoice:
    """Resolve ``completion.device``/``precision``, ``compound.backend``/``device`` and
    ``surface.backend``/``device``.

    Parameters
    ----------
    cfg : LaunchConfig
    cuda : bool, optional
        Whether CUDA is present (default: ask torch).

    Raises
    ------
    ConfigError
        An explicit value needs CUDA and there is none.
    """
    cuda = cuda_available() if cuda is None else bool(cuda)
    c, k = cfg.completion, cfg.compound
    reason = "CUDA device found" if cuda else "no CUDA device"
    for where, value in (("completion.device", c.device), ("compound.device", k.device)):
        if value == "cuda" and not cuda:
            raise ConfigError(f"{where}: 'cuda' needs a CUDA device and this machine has none; use 'auto' or 'cpu'")
    device = c.device if c.device != "auto" else ("cuda" if cuda else "cpu")
    precision = c.precision if c.precision != "auto" else ("fp16" if device == "cuda" else "fp32")
    if device == "cpu" and precision != "fp32":
        raise ConfigError(f"completion.precision: {precision!r} needs a CUDA device (completion.device = "
                          f"{c.device!r}, {reason}); use 'auto' or 'fp32'")
    backend = k.backend if k.backend != "auto" else ("torch" if cuda else "numba")
    cdev = k.device if k.device != "auto" else ("cuda" if cuda and backend == "torch" else "cpu")
    if backend == "torch" and cdev == "cpu" and k.backend == "torch":
        log.warning("compound.backend = 'torch' on the CPU is ~50x slower than the numba kernels; "
                    "'auto' picks numba on a CPU")
    s = cfg.surface
    mesh_backend, mesh_device = choose_surface(s.backend, s.device, cuda=cuda)
    if mesh_backend == "torch" and mesh_device == "cpu" and s.backend == "torch":
        log.warning("surface.backend = 'torch' on the CPU is ~5x slower than scipy; 'auto' picks scipy on a CPU")
    return ComputeChoice(device, precision, backend, cdev, reason, mesh_backend, mesh_device,
                         choose_bone_points(cfg.bone.points_device, backend, cdev))


def choose_bone_points(where: str, compound_backend: str, compound_device: str) -> str:
    """Concrete ``bone.points_device``: ``auto`` extracts on the compounding device only when that is a GPU
    (on a CPU the torch extraction costs ~2x the host copy plus numpy); ConfigError for ``compound`` without
    the torch backend, which has no device channel."""
    if where == "compound" and compound_backend != "torch":
        raise ConfigError(f"bone.points_device: 'compound' needs compound.backend = 'torch', got {compound_backend!r}")
    if where == "auto":
        return "compound" if compound_backend == "torch" and compound_device == "cuda" else "host"
    return where


def resolve_compute(cfg: LaunchConfig, *, cuda: bool | None = None) -> LaunchConfig:
    """``cfg`` with every ``auto`` compute key replaced by its concrete value; logs the one line that
    says what was chosen and why."""
    choice = choose_compute(cfg, cuda=cuda)
    log.info("%s", choice.describe())
    return cfg.with_overrides(choice.overrides())
