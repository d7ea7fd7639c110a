"""What a command may name as the spine it simulates, read the same way by every command.

- nothing: a procedural spine (:func:`usx_stream.sim.anatomy.make_spine`);
- ``PATH``: a real spine, a folder of per-level meshes in place or a CT label volume
  (:func:`usx_stream.sim.real_spine.real_spine`);
- ``ssm:FILE[:SEED]``: a plausible spine drawn from a shape model built by ``usx-stream shape-model build``
  (:func:`usx_stream.shape.sample.sample_checked`), placed in Reference like a real one. Without ``SEED`` the
  command's own seed draws it, so ``--seed`` alone gives a new spine and a new sweep.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

SSM_PREFIX = "ssm:"
# How far (Mahalanobis, in SD) a spine is drawn from the mean. A model of a few real spines has leading
# modes that also carry what differs between sources (smoothed, voxel-stepped, mean shapes); measured with
# the model of every subject but the three VerSe spines, draws within 0.5 SD all passed the plausibility
# checks (6 of 6), at 0.8 none did (0 of 6), at 1.0 one of 8 (each check ~5 s), so 0.5 is the default.
SSM_SAMPLE_SD = 0.5


@dataclass(frozen=True)
class SpineSpec:
    """A parsed ``--spine`` value: ``kind`` is ``"path"`` or ``"ssm"``; ``seed`` is None unless given."""

    kind: str
    path: Path
    seed: int | None = None

    def __str__(self) -> str:
        if self.kind == "path":
            return str(self.path)
        return f"{SSM_PREFIX}{self.path}" + ("" if self.seed is None else f":{self.seed}")


def parse_spine(text: str | Path) -> SpineSpec:
    """``PATH`` or ``ssm:FILE[:SEED]`` -> :class:`SpineSpec`; InputError naming the value when malformed."""
    text = str(text)
    if not text.startswith(SSM_PREFIX):
        return SpineSpec("path", Path(text))
    rest = text[len(SSM_PREFIX):]
    seed = None
    head, sep, tail = rest.rpartition(":")
    if sep and tail.lstrip("-").isdigit():
        rest, seed = head, int(tail)
        if seed < 0:
            raise InputError(f"--spine {text!r}: the seed must be a non-negative integer, got {seed}")
    if not rest:
        raise InputError(f"--spine {text!r}: expected ssm:FILE[:SEED] (FILE from usx-stream shape-model build)")
    if seed is None and sep and Path(head).is_file() and not Path(rest).exists():
        raise InputError(f"--spine {text!r}: the seed after {head!r} must be a non-negative integer, got {tail!r}")
    return SpineSpec("ssm", Path(rest), seed)


@functools.lru_cache(maxsize=4)
def _model(path: str):
    from ..shape.ssm import load_model

    if not Path(path).is_file():
        raise InputError(f"--spine ssm:{path}: no such shape model (make one with usx-stream shape-model build)")
    return load_model(path)


def ssm_spine(path: str | Path, seed: int, *, sd: float = SSM_SAMPLE_SD, spacing_mm: float = 1.0):
    """``(spine, draw)``: the spine of shape model ``path`` drawn by ``seed`` (a plausible one: see
    :func:`usx_stream.shape.sample.sample_checked`), in Reference, and the draw it came from (whose
    ``to_spine`` frames are the exact canonical vertebra frames, before placement)."""
    from ..shape.sample import sample_checked
    from .real_spine import spine_from_meshes

    draw, _, tries = sample_checked(_model(str(path)), np.random.default_rng(int(seed)), sd=sd)
    info = {"source": f"{SSM_PREFIX}{path}:{int(seed)}", "kind": "ssm", "draws": str(tries)}
    return spine_from_meshes(draw.spine, info, spacing_mm=spacing_mm), draw


def placement(spine) -> np.ndarray:
    """The 4x4 that moves a spine's LPS input frame to Reference (its ``lps_to_reference_mm``)."""
    m = np.eye(4)
    m[:3, 3] = [float(v) for v in spine.metadata["lps_to_reference_mm"].split()]
    return m


def load_spine(spec: str | Path | SpineSpec | None, *, seed: int = 0, labels: str = "auto", scale: float = 1.0,
               frame: str = "LPS"):
    """The :class:`~usx_stream.sim.anatomy.Spine` that ``spec`` names, in Reference; None for no ``spec``
    (the caller draws a procedural spine). ``seed`` draws a shape-model spine whose spec has no seed;
    ``labels``, ``scale`` and ``frame`` apply to a path."""
    if spec is None:
        return None
    spec = spec if isinstance(spec, SpineSpec) else parse_spine(spec)
    if spec.kind == "ssm":
        return ssm_spine(spec.path, seed if spec.seed is None else spec.seed)[0]
    from .real_spine import real_spine

    return real_spine(spec.path, labels=labels, scale=scale, frame=frame)
