"""The paired-data HDF5 file (US-X Complete's layout) and a torch dataset over it.

Datasets (keys of the original code, one row per vertebra, model frame, unit scale):

- ``incomplete_pcds`` : (N, P, 3) float32 — partial ultrasound clouds;
- ``labelmaps`` : (N, Q, 3) float32 — X-ray body labelmap points on the mid-sagittal plane;
- ``complete_pcds`` : (N, G, 3) float32 — ground truth;
- ``labels`` : (N,) int64 — level index, 0 = L1 … 4 = L5 (an index into ``number_per_class``);
- ``number_per_class`` : (5,) int64 — samples per level.

Added here: ``names`` (N,) — source of each sample (``spine00012/L3`` or a file name); ``centers_mm``
(N, 3) — origin of each sample's unit frame in its canonical vertebra frame (mm); file attributes
``mm_per_unit`` (mm per model unit), ``seed``, ``source``, ``command``, ``config`` (JSON) and ``skipped``
(JSON list of the vertebrae that gave no sample, with the reason).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..frames import LEVELS

KEYS = ("incomplete_pcds", "labelmaps", "complete_pcds", "labels")


@dataclass
class PairedArrays:
    """A whole paired-data file in memory.

    Attributes
    ----------
    partial : (N, P, 3) float32 ndarray
    labelmap : (N, Q, 3) float32 ndarray
    complete : (N, G, 3) float32 ndarray
    labels : (N,) int64 ndarray
        Level index (0 = L1).
    names : list of str
    mm_per_unit : float
    centers_mm : (N, 3) float64 ndarray or None
    attrs : dict
        Every other file attribute.
    """

    partial: np.ndarray
    labelmap: np.ndarray
    complete: np.ndarray
    labels: np.ndarray
    names: list[str]
    mm_per_unit: float
    centers_mm: np.ndarray | None
    attrs: dict

    def __len__(self) -> int:
        return len(self.labels)

    def levels(self) -> list[str]:
        return [LEVELS[i] for i in self.labels]


def write_pairs(path: str | Path, samples: Sequence, *, attrs: dict | None = None, mm_per_unit: float) -> Path:
    """Write samples (objects with ``level``, ``partial``, ``labelmap``, ``complete``, ``name``) to HDF5.

    Parameters
    ----------
    path : str or Path
        Output ``.h5`` file (replaced).
    samples : sequence of PairedSample
        Point counts must agree across samples.
    attrs : dict, keyword-only
        Extra file attributes (str, numbers; dicts and lists are stored as JSON).
    mm_per_unit : float, keyword-only
    """
    import h5py

    if len(samples) == 0:
        raise ValueError("samples: nothing to write (every vertebra was skipped?)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.array([LEVELS.index(s.level) for s in samples], dtype=np.int64)
    with h5py.File(path, "w") as f:
        f.create_dataset("incomplete_pcds", data=np.stack([s.partial for s in samples]).astype(np.float32))
        f.create_dataset("labelmaps", data=np.stack([s.labelmap for s in samples]).astype(np.float32))
        f.create_dataset("complete_pcds", data=np.stack([s.complete for s in samples]).astype(np.float32))
        f.create_dataset("labels", data=labels)
        f.create_dataset("number_per_class", data=np.bincount(labels, minlength=len(LEVELS)).astype(np.int64))
        f.create_dataset("names", data=np.array([s.name for s in samples], dtype=h5py.string_dtype()))
        f.create_dataset("centers_mm", data=np.stack([s.center_mm for s in samples]).astype(np.float64))
        f.attrs["mm_per_unit"] = float(mm_per_unit)
        for key, value in (attrs or {}).items():
            f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list, tuple)) else value
    return path


def read_pairs(path: str | Path) -> PairedArrays:
    """Read a paired-data HDF5 file written by :func:`write_pairs` (or the original code's layout).

    Files without ``labelmaps`` (US-only data) get an empty ``(N, 0, 3)`` labelmap; files without
    ``mm_per_unit`` are assumed to use 50 mm per unit (``completion.normalize.SCALE_MM``).
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file: not found: {path}")
    with h5py.File(path, "r") as f:
        missing = [k for k in ("incomplete_pcds", "complete_pcds", "labels") if k not in f]
        if missing:
            raise ValueError(f"data file {path}: missing datasets {missing}")
        partial = f["incomplete_pcds"][()].astype(np.float32)
        complete = f["complete_pcds"][()].astype(np.float32)
        labels = f["labels"][()].astype(np.int64)
        labelmap = (f["labelmaps"][()].astype(np.float32) if "labelmaps" in f
                    else np.zeros((len(labels), 0, 3), dtype=np.float32))
        names = ([n.decode() if isinstance(n, bytes) else str(n) for n in f["names"][()]] if "names" in f
                 else [f"{path.stem}/{i}" for i in range(len(labels))])
        centers = f["centers_mm"][()] if "centers_mm" in f else None
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    if not (len(partial) == len(complete) == len(labels) == len(labelmap)):
        raise ValueError(f"data file {path}: row counts differ between datasets")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(LEVELS)):
        raise ValueError(f"data file {path}: labels must be level indices 0..4, got {labels.min()}..{labels.max()}")
    mm = float(attrs.pop("mm_per_unit", 50.0))
    return PairedArrays(partial, labelmap, complete, labels, names, mm, centers, attrs)


def read_pairs_many(spec: str | Path) -> PairedArrays:
    """:func:`read_pairs` of one file, or of several given as ``"a.h5,b.h5"``, concatenated in that order
    (e.g. ray-cast pairs and pairs made on the node's own path, ``usx-stream dataset --node-sessions``).
    All files must use the same units and point counts."""
    paths = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not paths:
        raise ValueError(f"data files: none given in {spec!r}")
    parts = [read_pairs(p) for p in paths]
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    for path, part in zip(paths[1:], parts[1:]):
        if part.mm_per_unit != first.mm_per_unit:
            raise ValueError(f"data file {path}: mm_per_unit {part.mm_per_unit} differs from {paths[0]}'s "
                             f"{first.mm_per_unit}")
        for name in ("partial", "labelmap", "complete"):
            if getattr(part, name).shape[1:] != getattr(first, name).shape[1:]:
                raise ValueError(f"data file {path}: {name} points {getattr(part, name).shape[1:]} differ from "
                                 f"{paths[0]}'s {getattr(first, name).shape[1:]}")
    centers = (np.concatenate([p.centers_mm for p in parts]) if all(p.centers_mm is not None for p in parts)
               else None)
    return PairedArrays(np.concatenate([p.partial for p in parts]), np.concatenate([p.labelmap for p in parts]),
                        np.concatenate([p.complete for p in parts]), np.concatenate([p.labels for p in parts]),
                        [n for p in parts for n in p.names], first.mm_per_unit, centers,
                        {"files": [str(p) for p in paths]})


def torch_dataset(arrays: PairedArrays):
    """A ``torch.utils.data.TensorDataset`` of (partial, labelmap, complete, label) tensors."""
    import torch

    return torch.utils.data.TensorDataset(
        torch.from_numpy(arrays.partial), torch.from_numpy(arrays.labelmap),
        torch.from_numpy(arrays.complete), torch.from_numpy(arrays.labels))
