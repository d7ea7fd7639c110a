"""Pure-torch point-cloud operators: furthest point sampling, kNN, gather, grouping, three-NN interpolation.

These replace the mmcv / PointNet++ CUDA kernels the original network needs, with the same semantics:

* ``furthest_point_sample`` starts at a fixed index (0, as mmcv) and keeps the running minimum squared
  distance with ``torch.minimum``; ties pick the lowest index (``argmax`` returns the first maximum).
* ``three_nn`` returns *Euclidean* distances (mmcv returns ``sqrt`` of the squared distance) and
  ``three_nn_weights`` builds inverse-distance weights from them, clamped at 1e-10 as the original.
* ``knn`` works on squared distances and processes queries in chunks so memory stays
  ``B * chunk * N`` floats instead of ``B * M * N`` (the original materialises the full matrix: 10,240² per
  vertebra in the paper configuration).

Everything is written with tensor operations only (no data-dependent Python control flow), so
``torch.export`` traces it into a graph of fixed size. The one exception is the sampling loop of
``furthest_point_sample``: it is inherently sequential, one step per sample, and a traced graph grows
linearly with ``num_samples``; the inference network therefore never calls it (see ``nets``).

Shapes: points are ``(B, N, 3)`` float tensors. The mmcv-compatible functions (``gather_points``,
``group_points``, ``three_interpolate``) take channel-first features ``(B, C, N)`` as mmcv does; the network
itself works channel-last (``index_points``, ``three_interpolate_rows``). Indices are ``int64``.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import torch
import torch.nn.functional as F

# Largest k TensorRT's TopK layer accepts (torch-tensorrt's topk converter rejects k > 3840).
MAX_TOPK = 3840

# Default element budget of one distance block in knn(): B * chunk * N floats (64 MiB of float32).
_KNN_BLOCK_ELEMENTS = 16 * 1024 * 1024


def _check_points(name: str, points: torch.Tensor) -> None:
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (B, N, 3), got {tuple(points.shape)}")


def square_distance(query: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between two point sets.

    Parameters
    ----------
    query : (B, M, 3) tensor
    ref : (B, N, 3) tensor

    Returns
    -------
    (B, M, N) tensor
        ``|q|² + |r|² - 2 q·r``: the squared distance up to rounding, which can leave tiny negative values
        (callers that take a square root clamp first).
    """
    if torch.is_autocast_enabled(query.device.type):
        # Neighbour ranks need float32: under fp16 autocast the expansion loses the small differences between
        # near neighbours. (Checked at trace time, so exports made without autocast carry no autocast node.)
        with torch.autocast(query.device.type, enabled=False):
            return square_distance(query.float(), ref.float())
    # One batched GEMM on augmented coordinates, [q, |q|², 1] · [-2r, 1, |r|²], instead of a GEMM plus three
    # full-size element-wise passes: the (B, M, N) block is written once.
    # (constant padding, not ones_like: it exports to a single pad op that TensorRT converts.)
    q_aug = F.pad(torch.cat([query, (query * query).sum(-1, keepdim=True)], dim=2), (0, 1), value=1.0)
    r_aug = torch.cat([F.pad(-2.0 * ref, (0, 1), value=1.0), (ref * ref).sum(-1, keepdim=True)], dim=2)
    return torch.bmm(q_aug, r_aug.transpose(1, 2))


def furthest_point_sample(points: torch.Tensor, num_samples: int, *, start_index: int = 0) -> torch.Tensor:
    """Furthest point sampling, batched.

    Parameters
    ----------
    points : (B, N, 3) tensor
    num_samples : int
        Number of indices to return, 1 <= num_samples <= N.
    start_index : int
        Index of the first sample (mmcv uses 0).

    Returns
    -------
    (B, num_samples) int64 tensor
        Indices into ``points``; sample ``i`` is the point furthest (squared Euclidean distance) from samples
        ``0 .. i-1``; ties resolve to the lowest index.
    """
    _check_points("points", points)
    b, n, _ = points.shape
    if not 1 <= num_samples <= n:
        raise ValueError(f"num_samples must be in [1, {n}], got {num_samples}")
    if not 0 <= start_index < n:
        raise ValueError(f"start_index must be in [0, {n}), got {start_index}")
    batch = torch.arange(b, device=points.device)
    current = torch.full((b,), start_index, dtype=torch.long, device=points.device)
    min_dist = torch.full((b, n), float("inf"), dtype=points.dtype, device=points.device)
    chosen = []
    for _ in range(num_samples):
        chosen.append(current)
        centre = points[batch, current].unsqueeze(1)
        min_dist = torch.minimum(min_dist, ((points - centre) ** 2).sum(-1))
        current = torch.argmax(min_dist, dim=1)
    return torch.stack(chosen, dim=1)


def _numba_fps():
    """The compiled kernel of ``furthest_point_sample_fast``, or None where numba is not installed."""
    global _NUMBA_FPS
    if _NUMBA_FPS is None:
        try:
            import numba
        except ImportError:
            _NUMBA_FPS = False
            return None

        @numba.njit(cache=True, nogil=True)
        def kernel(points, count, start):  # pragma: no cover - compiled
            b, n, _ = points.shape
            out = np.empty((b, count), dtype=np.int64)
            for k in range(b):
                dist = np.full(n, np.inf, dtype=np.float32)
                cur = start
                for i in range(count):
                    out[k, i] = cur
                    cx, cy, cz = points[k, cur, 0], points[k, cur, 1], points[k, cur, 2]
                    best, best_j = np.float32(-1.0), 0
                    for j in range(n):
                        dx, dy, dz = points[k, j, 0] - cx, points[k, j, 1] - cy, points[k, j, 2] - cz
                        d = dx * dx + dy * dy + dz * dz
                        if d < dist[j]:
                            dist[j] = d
                        if dist[j] > best:  # strict: ties keep the lowest index, as argmax does
                            best, best_j = dist[j], j
                    cur = best_j
            return out

        _NUMBA_FPS = kernel
    return _NUMBA_FPS or None


_NUMBA_FPS = None


def furthest_point_sample_fast(points: torch.Tensor, num_samples: int, *, start_index: int = 0) -> torch.Tensor:
    """``furthest_point_sample`` with a compiled loop for CPU tensors outside tracing.

    The torch loop costs a handful of small kernels per sample, and on a busy CPU each of them waits for
    its thread pool; one compiled loop (numba, imported on first use) does the same arithmetic in float32
    with the same tie rule at a fraction of the time. CUDA tensors, traced graphs and machines without
    numba use ``furthest_point_sample``.
    """
    tracing = torch.compiler.is_compiling() or getattr(torch.compiler, "is_exporting", lambda: False)()
    if points.device.type != "cpu" or tracing or points.requires_grad or _numba_fps() is None:
        return furthest_point_sample(points, num_samples, start_index=start_index)
    _check_points("points", points)
    n = points.shape[1]
    if not 1 <= num_samples <= n:
        raise ValueError(f"num_samples must be in [1, {n}], got {num_samples}")
    if not 0 <= start_index < n:
        raise ValueError(f"start_index must be in [0, {n}), got {start_index}")
    arr = np.ascontiguousarray(points.detach().numpy(), dtype=np.float32)
    return torch.from_numpy(_numba_fps()(arr, int(num_samples), int(start_index)))


def gather_points(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Pick columns of a channel-first feature tensor (mmcv ``gather_points``).

    Parameters
    ----------
    features : (B, C, N) tensor
    idx : (B, M) int64 tensor with values in [0, N)

    Returns
    -------
    (B, C, M) tensor
    """
    b, c, _ = features.shape
    return torch.gather(features, 2, idx.unsqueeze(1).expand(b, c, idx.shape[1]))


def index_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Pick rows of a channel-last tensor, for index tensors of any shape.

    Parameters
    ----------
    points : (B, N, C) tensor
    idx : (B, ...) int64 tensor with values in [0, N)

    Returns
    -------
    (B, ..., C) tensor
        ``out[b, ...] = points[b, idx[b, ...]]``.
    """
    b, n, c = points.shape
    # One flat row gather (index_select) copies C contiguous values per row: faster on CPU than gather
    # with an index expanded over channels, and it maps to a single Gather in ONNX / TensorRT.
    offset = (torch.arange(b, device=points.device) * n).reshape((b,) + (1,) * (idx.dim() - 1))
    rows = torch.index_select(points.reshape(b * n, c), 0, (idx + offset).reshape(-1))
    return rows.reshape(tuple(idx.shape) + (c,))


def group_points(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather neighbourhoods of channel-first features (mmcv ``grouping_operation``).

    Parameters
    ----------
    features : (B, C, N) tensor
    idx : (B, M, K) int64 tensor with values in [0, N)

    Returns
    -------
    (B, C, M, K) tensor
        ``out[b, :, m, k] = features[b, :, idx[b, m, k]]``.
    """
    b, m, k = idx.shape
    return gather_points(features, idx.reshape(b, m * k)).reshape(b, features.shape[1], m, k)


_TREE_KNN = threading.local()


@contextlib.contextmanager
def tree_knn():
    """Inside this context (on this thread), :func:`knn` on CPU tensors outside autograd queries a k-d tree
    (scipy) instead of ranking a full distance matrix with ``topk``.

    The neighbours are the same (equal distances aside) in the same ascending order, with squared
    distances computed in float64 instead of the matrix product's float32. For the network's 2048-point
    clouds on one thread it is several times faster: ``topk`` over B x 2048 x 2048 distances is ~40 % of an
    eager CPU inference. Eager CPU inference only: it is data-dependent Python, so traced or exported
    graphs (TensorRT, torch.compile) never enter it.
    """
    previous = getattr(_TREE_KNN, "on", False)
    _TREE_KNN.on = True
    try:
        yield
    finally:
        _TREE_KNN.on = previous


def _use_tree(query: torch.Tensor, ref: torch.Tensor) -> bool:
    return (getattr(_TREE_KNN, "on", False) and query.device.type == "cpu" and ref.device.type == "cpu"
            and not (query.requires_grad or ref.requires_grad) and not torch.compiler.is_compiling())


def _knn_tree(query: torch.Tensor, ref: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    from scipy.spatial import cKDTree

    q = query.detach().to(torch.float64).numpy()
    r = ref.detach().to(torch.float64).numpy()
    b, m, _ = q.shape
    dist2 = np.empty((b, m, k), dtype=np.float64)
    idx = np.empty((b, m, k), dtype=np.int64)
    for i in range(b):
        d, j = cKDTree(r[i]).query(q[i], k=k)
        dist2[i], idx[i] = np.square(d).reshape(m, k), j.reshape(m, k)
    return torch.from_numpy(dist2).to(query.dtype), torch.from_numpy(idx)


def knn(query: torch.Tensor, ref: torch.Tensor, k: int, *,
        chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest neighbours of each query point among the reference points.

    Parameters
    ----------
    query : (B, M, 3) tensor
    ref : (B, N, 3) tensor
    k : int
        1 <= k <= min(N, 3840).
    chunk : int, optional
        Queries per distance block; default keeps a block at about 16 M elements.

    Returns
    -------
    dist2 : (B, M, k) tensor
        Squared distances, ascending.
    idx : (B, M, k) int64 tensor
        Indices into ``ref``.
    """
    _check_points("query", query)
    _check_points("ref", ref)
    b, m, _ = query.shape
    n = ref.shape[1]
    if not 1 <= k <= min(n, MAX_TOPK):
        raise ValueError(f"k must be in [1, {min(n, MAX_TOPK)}], got {k}")
    if chunk is None:
        chunk = max(1, _KNN_BLOCK_ELEMENTS // max(1, b * n))
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    if _use_tree(query, ref):
        return _knn_tree(query, ref, k)
    if chunk >= m:  # (a full-range slice would export as an alias node)
        return torch.topk(square_distance(query, ref), k, dim=-1, largest=False, sorted=True)
    dists, idxs = [], []
    # The number of blocks depends only on shapes, so an exported graph has a fixed, small number of them.
    for start in range(0, m, chunk):
        d = square_distance(query[:, start:start + chunk], ref)
        dist_k, idx_k = torch.topk(d, k, dim=-1, largest=False, sorted=True)
        dists.append(dist_k)
        idxs.append(idx_k)
    return torch.cat(dists, dim=1), torch.cat(idxs, dim=1)


def knn_self(points: torch.Tensor, k: int, *, chunk: int | None = None) -> torch.Tensor:
    """kNN indices of a point set within itself (each point is its own first neighbour).

    Parameters
    ----------
    points : (B, N, 3) tensor
    k : int

    Returns
    -------
    (B, N, k) int64 tensor
    """
    return knn(points, points, k, chunk=chunk)[1]


def three_nn(target: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Three nearest source points of each target point (mmcv ``three_nn``).

    Parameters
    ----------
    target : (B, n, 3) tensor
    source : (B, m, 3) tensor, m >= 3

    Returns
    -------
    dist : (B, n, 3) tensor
        Euclidean distances (not squared), ascending; not differentiable (as mmcv).
    idx : (B, n, 3) int64 tensor
    """
    # No gradient through the distances, as mmcv's three_nn (its backward returns None): the sqrt has an
    # infinite derivative at the coincident points that pooled centres always have. Under no_grad (inference,
    # export) there is nothing to cut, and skipping detach keeps alias nodes out of the exported graph.
    if torch.is_grad_enabled():
        target, source = target.detach(), source.detach()
    dist2, idx = knn(target, source, 3)
    return torch.sqrt(torch.clamp(dist2, min=0.0)), idx


def three_nn_weights(target: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-distance weights for three-NN interpolation (the original ``three_nn_upsampling``).

    Returns
    -------
    idx : (B, n, 3) int64 tensor
    weight : (B, n, 3) tensor
        ``(1/d) / sum(1/d)`` with Euclidean ``d`` clamped at 1e-10; rows sum to 1.
    """
    dist, idx = three_nn(target, source)
    recip = 1.0 / torch.clamp(dist, min=1e-10)
    return idx, recip / recip.sum(dim=2, keepdim=True)


def three_interpolate(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted sum of three source features per target point (mmcv ``three_interpolate``).

    Parameters
    ----------
    features : (B, C, m) tensor
    idx : (B, n, 3) int64 tensor
    weight : (B, n, 3) tensor

    Returns
    -------
    (B, C, n) tensor
    """
    grouped = group_points(features, idx)  # (B, C, n, 3)
    return (grouped * weight.unsqueeze(1)).sum(dim=3)


def three_interpolate_rows(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``three_interpolate`` for channel-last features: (B, m, C), (B, n, 3), (B, n, 3) -> (B, n, C)."""
    return (index_points(features, idx) * weight.unsqueeze(-1)).sum(dim=2)
