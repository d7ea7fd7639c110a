"""4x4 homogeneous transforms and a PLUS-style transform repository.

Transforms are named ``XToY`` and map points expressed in frame ``X`` to frame ``Y``
(``p_Y = XToY @ p_X``), exactly as PLUS names them. Matrices are ``(4, 4) float64`` ndarrays;
translations are in millimetres unless a transform says otherwise (ImageToProbe carries the pixel size).
"""

from __future__ import annotations

import re
from collections import deque
from typing import Iterable, Mapping

import numpy as np

class TransformError(KeyError):
    """A transform cannot be found or composed; the message names the missing link."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want a readable sentence
        return str(self.args[0]) if self.args else ""


def split_name(name: str) -> tuple[str, str]:
    """Split a PLUS transform name ``"ImageToProbe"`` into ``("Image", "Probe")``.

    The split is at the last ``To`` that is followed by an upper-case letter, so frame names that
    themselves contain ``To`` (``"StylusTipToStylus"``) split correctly.
    """
    if not isinstance(name, str):
        raise ValueError(f"transform name must be a string, got {name!r}")
    # Prefer the last "To<Upper>" boundary: PLUS frame names start with a capital letter.
    idx = [m.start() for m in re.finditer(r"To(?=[A-Z])", name)]
    idx = [i for i in idx if i > 0]
    if not idx:
        raise ValueError(f"transform name {name!r} is not of the form 'FromToTo' (e.g. 'ImageToProbe')")
    i = idx[-1]
    return name[:i], name[i + 2:]


def make_name(from_frame: str, to_frame: str) -> str:
    return f"{from_frame}To{to_frame}"


def as_matrix(value, *, name: str = "transform") -> np.ndarray:
    """Validate and convert a 4x4, 3x4 or flat row-major (16 or 12 values) matrix to ``(4, 4) float64``."""
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: not a numeric matrix: {value!r}") from e
    if m.shape in ((16,), (12,)):
        m = m.reshape(-1, 4)
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise ValueError(f"{name}: expected a 4x4 matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name}: matrix has non-finite values: {m.tolist()}")
    return m


def invert(m: np.ndarray) -> np.ndarray:
    """Inverse of a general (affine, possibly scaled) 4x4 transform."""
    return np.linalg.inv(as_matrix(m))


def translation(t) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = np.asarray(t, dtype=np.float64)
    return m


def rotation(axis, angle_rad: float) -> np.ndarray:
    """4x4 rotation of ``angle_rad`` radians about ``axis`` (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    x, y, z = a
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    C = 1 - c
    r = np.array(
        [
            [c + x * x * C, x * y * C - z * s, x * z * C + y * s],
            [y * x * C + z * s, c + y * y * C, y * z * C - x * s],
            [z * x * C - y * s, z * y * C + x * s, c + z * z * C],
        ]
    )
    m = np.eye(4)
    m[:3, :3] = r
    return m


def apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to ``(N, 3)`` points; returns ``(N, 3) float64``."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points: expected shape (N, 3), got {p.shape}")
    return p @ m[:3, :3].T + m[:3, 3]


class TransformRepository:
    """Named transforms between coordinate frames, with automatic inversion and chaining.

    ``set("ProbeToTracker", M)`` stores one edge; ``get("ImageToReference")`` finds a path through
    the stored edges (each usable forwards or inverted) and composes it. Missing links raise
    :class:`TransformError` naming the frames that could not be connected and what is known.
    A status per transform (``"OK"`` / ``"INVALID"``, as PLUS ``TransformStatus``) travels with it:
    a composed transform is valid only when every edge on its path is.
    """

    def __init__(self, transforms: Mapping[str, np.ndarray] | None = None) -> None:
        # edges[(from, to)] = (matrix, valid); both directions are derived at lookup time.
        self._edges: dict[tuple[str, str], tuple[np.ndarray, bool]] = {}
        for name, m in (transforms or {}).items():
            self.set(name, m)

    def set(self, name: str, matrix, *, valid: bool = True) -> None:
        src, dst = split_name(name)
        m = as_matrix(matrix, name=name)
        # Replace an existing edge in either direction so there is one truth per pair.
        self._edges.pop((dst, src), None)
        self._edges[(src, dst)] = (m, bool(valid))

    def update(self, transforms: Mapping[str, np.ndarray], status: Mapping[str, bool] | None = None) -> None:
        for name, m in transforms.items():
            self.set(name, m, valid=True if status is None else bool(status.get(name, True)))

    def names(self) -> list[str]:
        return [make_name(a, b) for a, b in self._edges]

    def frames(self) -> set[str]:
        return {f for edge in self._edges for f in edge}

    def _neighbours(self, frame: str) -> Iterable[tuple[str, np.ndarray, bool]]:
        for (a, b), (m, ok) in self._edges.items():
            if a == frame:
                yield b, m, ok
            elif b == frame:
                yield a, None, ok  # inverse computed lazily along the chosen path

    def _path(self, src: str, dst: str) -> list[tuple[str, str]] | None:
        if src == dst:
            return []
        prev: dict[str, str] = {src: src}
        queue = deque([src])
        while queue:
            f = queue.popleft()
            for g, _, _ in self._neighbours(f):
                if g not in prev:
                    prev[g] = f
                    if g == dst:
                        path = [(f, g)]
                        while f != src:
                            path.append((prev[f], f))
                            f = prev[f]
                        return path[::-1]
                    queue.append(g)
        return None

    def get_with_status(self, name: str) -> tuple[np.ndarray, bool]:
        src, dst = split_name(name)
        path = self._path(src, dst)
        if path is None:
            known = ", ".join(sorted(self.names())) or "none"
            reachable = sorted(self._reachable(src) - {src})
            raise TransformError(
                f"cannot compute {name}: no chain of transforms connects frame '{src}' to '{dst}' "
                f"(frames reachable from '{src}': {reachable or 'none'}; known transforms: {known})"
            )
        m = np.eye(4)
        valid = True
        for a, b in path:
            if (a, b) in self._edges:
                edge, ok = self._edges[(a, b)]
            else:
                fwd, ok = self._edges[(b, a)]
                edge = np.linalg.inv(fwd)
            m = edge @ m
            valid = valid and ok
        return m, valid

    def get(self, name: str) -> np.ndarray:
        """Return the 4x4 matrix for ``name`` (``"XToY"``), chaining and inverting as needed."""
        return self.get_with_status(name)[0]

    def is_valid(self, name: str) -> bool:
        return self.get_with_status(name)[1]

    def has(self, name: str) -> bool:
        src, dst = split_name(name)
        return self._path(src, dst) is not None

    def _reachable(self, src: str) -> set[str]:
        seen = {src}
        queue = deque([src])
        while queue:
            f = queue.popleft()
            for g, _, _ in self._neighbours(f):
                if g not in seen:
                    seen.add(g)
                    queue.append(g)
        return seen

    def copy(self) -> "TransformRepository":
        r = TransformRepository()
        r._edges = {k: (m.copy(), ok) for k, (m, ok) in self._edges.items()}
        return r

    def __repr__(self) -> str:
        return f"TransformRepository({sorted(self.names())})"
