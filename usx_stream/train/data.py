"""The paired-data HDF5 file (US-X Complete's layout) and a torch dataset over it.

Datasets (keys of the original code, one row per vertebra, model frame, unit scale):

- ``incomplete_pcds`` : (N, P, 3) float32 — partial ultrasound clouds;
- ``labelmaps`` : (N, Q, 3) float32 — X-ray body labelmap points on the mid-sagittal plane;
- ``complete_pcds`` : (N, G, 3) float32 — ground truth;
- ``labels`` : (N,) int64 — level index, 0 = L1 … 4 = L5 (an index into ``number_per_class``);
- ``number_per_class`` : (5,) int64 — samples per level.

Added here: ``names`` (N,) — source of each sample (``spine00012/L3`` or a file name); ``centers_mm``
(N, 3) — origin of each sample's unit frame in its canonical vertebra frame (mm); file attributes
``mm_per_unit`` (mm per model unit), ``seed``, ``source``, ``command``, ``config`` (JSON), ``skipped``
(JSON list of the vertebrae that gave no sample, with the reason) and ``items`` (source spines, sessions
or files of the whole generation). A part of a sharded generation (``usx-stream dataset --shard I/N``)
also has ``shard`` ([I, N]) and ``shard_items`` ([start, stop) of the items); :func:`merge_pairs` joins
the parts into the file the unsharded generation writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
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
    if len(samples) == 0:
        raise ValueError("samples: nothing to write (every vertebra was skipped?)")
    datasets = {
        "incomplete_pcds": np.stack([s.partial for s in samples]).astype(np.float32),
        "labelmaps": np.stack([s.labelmap for s in samples]).astype(np.float32),
        "complete_pcds": np.stack([s.complete for s in samples]).astype(np.float32),
        "labels": np.array([LEVELS.index(s.level) for s in samples], dtype=np.int64),
        "names": [s.name for s in samples],
        "centers_mm": np.stack([s.center_mm for s in samples]).astype(np.float64),
    }
    file_attrs = {k: json.dumps(v) if isinstance(v, (dict, list, tuple)) else v for k, v in (attrs or {}).items()}
    return _write(path, datasets, {"mm_per_unit": float(mm_per_unit), **file_attrs})


def _write(path: str | Path, datasets: dict, attrs: dict) -> Path:
    """The file of :func:`write_pairs` from its datasets (``number_per_class`` is derived from ``labels``)."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key in ("incomplete_pcds", "labelmaps", "complete_pcds", "labels"):
            f.create_dataset(key, data=datasets[key])
        f.create_dataset("number_per_class", data=np.bincount(datasets["labels"], minlength=len(LEVELS)).astype(np.int64))
        f.create_dataset("names", data=np.array(datasets["names"], dtype=h5py.string_dtype()))
        f.create_dataset("centers_mm", data=datasets["centers_mm"])
        for key, value in attrs.items():
            f.attrs[key] = value
    return path


# Attributes allowed to differ between the parts of one sharded generation (the rest are its settings).
_PART_ATTRS = ("command", "skipped", "shard", "shard_items")


def merge_pairs(out: str | Path, parts: Sequence[str | Path], *, command: str = "") -> Path:
    """Join the parts of a sharded generation into the file the unsharded generation writes.

    Parameters
    ----------
    out : path
        Merged ``.h5`` (replaced).
    parts : sequence of paths
        Every part ``0..N-1`` of one ``usx-stream dataset ... --shard I/N`` generation, in any order.
    command : str, keyword-only
        Stored as the merged file's ``command`` attribute.

    Raises
    ------
    InputError
        A part that is missing, not a shard, made with other settings (seed, source, configuration,
        point counts, ...) or given twice, or a set of parts that does not cover every item once.
    """
    if not parts:
        raise InputError("--merge: no part files given")
    loaded = [_read_part(Path(path)) for path in parts]
    settings = _same_generation(loaded)
    ordered = _in_order(loaded, int(settings.get("items", -1)))
    merged = {key: np.concatenate([d[key] for _, _, d in ordered]) for key in loaded[0][2] if key != "names"}
    merged["names"] = [n.decode() if isinstance(n, bytes) else str(n) for _, _, d in ordered for n in d["names"]]
    skipped = [r for _, a, _ in ordered for r in json.loads(a.get("skipped", "[]"))]
    return _write(out, merged, {**settings, "command": command, "skipped": json.dumps(skipped)})


def _read_part(path: Path) -> tuple[Path, dict, dict]:
    """``(path, attributes, datasets)`` of one part of a sharded generation."""
    if not path.is_file():
        raise InputError(f"--merge: part not found: {path}")
    with _open_hdf5(path, f"--merge: {path}") as f:
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        if "shard" not in attrs or "shard_items" not in attrs:
            raise InputError(f"--merge: {path} is not a part of a sharded generation (no shard attribute)")
        data = {k: f[k][()] for k in ("incomplete_pcds", "labelmaps", "complete_pcds", "labels", "names",
                                      "centers_mm") if k in f}
    if len(data) < 6:
        raise InputError(f"--merge: {path}: not a usx-stream pair file (datasets {sorted(data)})")
    return path, attrs, data


def _same_generation(loaded: list[tuple[Path, dict, dict]]) -> dict:
    """The generation's settings (attributes but the part's own), after checking every part shares them and
    its point counts."""
    first_path, first_attrs, first_data = loaded[0]
    settings = {k: v for k, v in first_attrs.items() if k not in _PART_ATTRS}
    for path, attrs, data in loaded[1:]:
        for key in sorted(set(settings) | {k for k in attrs if k not in _PART_ATTRS}):
            if attrs.get(key) != settings.get(key):
                raise InputError(f"--merge: {path} and {first_path} come from different generations: {key} "
                                 f"{attrs.get(key)!r} vs {settings.get(key)!r}")
        for key in ("incomplete_pcds", "labelmaps", "complete_pcds"):
            if data[key].shape[1:] != first_data[key].shape[1:]:
                raise InputError(f"--merge: {path}: {key} shape {data[key].shape[1:]} differs from {first_path}'s "
                                 f"{first_data[key].shape[1:]}")
    return settings


def _in_order(loaded: list[tuple[Path, dict, dict]], n_items: int) -> list[tuple[Path, dict, dict]]:
    """The parts in shard order, after checking each is there once and together they cover items 0..n-1."""
    first_path, first_attrs, _ = loaded[0]
    n_parts = json.loads(first_attrs["shard"])[1]
    by_index: dict[int, tuple] = {}
    for path, attrs, data in loaded:
        i, n = json.loads(attrs["shard"])
        if n != n_parts:
            raise InputError(f"--merge: {path} is part {i} of {n}, {first_path} a part of {n_parts}")
        if i in by_index:
            raise InputError(f"--merge: part {i} of {n} given twice ({by_index[i][0]} and {path})")
        by_index[i] = (path, attrs, data)
    missing = sorted(set(range(n_parts)) - set(by_index))
    if missing:
        raise InputError(f"--merge: parts {missing} of {n_parts} missing (have {sorted(by_index)})")
    ordered = [by_index[i] for i in range(n_parts)]
    covered = 0
    for path, attrs, _ in ordered:
        start, stop = json.loads(attrs["shard_items"])
        if start != covered:
            raise InputError(f"--merge: {path} covers items {start}..{stop - 1}, expected to start at {covered}")
        covered = stop
    if covered != n_items:
        raise InputError(f"--merge: the parts cover items 0..{covered - 1} of {n_items}")
    return ordered


def _open_hdf5(path: Path, what: str):
    """``h5py.File(path, "r")``; a file HDF5 cannot open (another format, truncated) is bad input named by
    ``what``, not an OSError from inside h5py."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{what}: not a readable HDF5 file ({e})") from None


def read_pairs(path: str | Path) -> PairedArrays:
    """Read a paired-data HDF5 file written by :func:`write_pairs` (or the original code's layout).

    Files without ``labelmaps`` (US-only data) get an empty ``(N, 0, 3)`` labelmap; files without
    ``mm_per_unit`` are assumed to use 50 mm per unit (``completion.normalize.SCALE_MM``).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file: not found: {path}")
    with _open_hdf5(path, f"data file {path}") as f:
        missing = [k for k in ("incomplete_pcds", "complete_pcds", "labels") if k not in f]
        if missing:
            raise InputError(f"data file {path}: missing datasets {missing} (not paired data from "
                             f"usx-stream dataset?)")
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
