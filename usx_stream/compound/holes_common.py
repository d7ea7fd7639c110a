"""Definitions shared by the hole-filling kernels."""

from __future__ import annotations

import numba as nb
import numpy as np

# The 13 stick directions of PLUS (x, y, z), in its order (the order decides how ties are summed).
STICKS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, -1, 0], [1, 0, -1],
                   [0, 1, -1], [1, 1, 1], [-1, 1, 1], [1, -1, 1], [-1, -1, 1]], dtype=np.int64)


@nb.njit(inline="always")
def cast_value(value, is_int):
    """C's ``(T)double``: truncation towards zero for integer volume types."""
    return np.float64(np.int64(value)) if is_int else value
