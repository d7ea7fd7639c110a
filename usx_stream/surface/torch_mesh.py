"""Watertight mesh of a point cloud by a distance field and marching cubes, in pure torch.

The algorithm and parameters of :func:`usx_stream.surface.distance_field.distance_field_mesh` (see
its module notes for why each step is there), written with torch tensor operations only, so that it
runs on whatever device it is given: the node's GPU path meshes on the GPU. Pure torch on purpose:
the GPU machines have torch but not scikit-image, and compiled extras (warp-lang, pytorch3d) are
neither installable there nor small enough to carry.

1. spacing and outliers: distance of each point to its 3rd-nearest neighbour (chunked ``cdist`` +
   ``topk``), the same outlier rule and automatic offset as the scipy mesher;
2. ``udf``: the exact distance from the grid nodes to the nearest point, by a scatter-min of exact
   distances from each point to the nodes within reach (where the marching and the gradient read
   the field), the rest clamped (only its sign is read there);
3. cavities: the outside is flood-filled from the grid border through ``udf >= offset`` by iterated
   6-neighbour dilation (as ``binary_fill_holes``); the rest is solid. Small parts: 6-connected
   components by min-label propagation with pointer jumping, parts under ``min_part_fraction`` of
   the largest dropped;
4. isosurface: marching cubes with a case table derived in :func:`_cube_table` from one rule per
   face (each run of inside corners is cut off by a segment; diagonal inside corners are separated).
   The rule reads only a face's own corners, so neighbouring cubes agree on it and the surface is
   closed and manifold; each cube's segments close into loops, triangulated without a diagonal along
   a face (which the neighbour could draw too). One vertex per crossed grid edge, as many vertices
   and triangles as scikit-image's marching cubes gives on the same grid;
5. vertices move back by ``offset`` along the field gradient (trilinear samples), then onto the
   least-squares plane of their nearest points (smallest eigenvector by power iteration).

Marching tetrahedra (no table at all) was tried first: closed too, but ~3x the triangles on the
same grid, so the triangle budget coarsened the grid to ~4.3 mm and the mesh lost accuracy (ASSD
0.29 vs 0.21 mm on real vertebrae).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from . import distance_field as _df

log = logging.getLogger(__name__)

MAX_CELLS = _df.MAX_CELLS
CHUNK_DISTANCES = 1 << 23
"""Distances per ``cdist`` chunk (32 MB of float32): memory stays bounded on any grid."""
CHECK_EVERY = 8
"""Propagation steps between convergence checks (each check waits for the device)."""

# Marching cubes with its case table derived here. Cube corner c is at offset (c>>2 & 1, c>>1 & 1, c & 1);
# a cube edge is (lower corner, axis bit: 4 x, 2 y, 1 z), the same kind as in the global edge id.
CORNER = np.array([[c >> 2 & 1, c >> 1 & 1, c & 1] for c in range(8)])
CUBE_EDGES = [(c, bit) for bit in (4, 2, 1) for c in range(8) if not c & bit]
_EDGE_OF = {frozenset((c, c | bit)): i for i, (c, bit) in enumerate(CUBE_EDGES)}
_MID = np.array([CORNER[c] + 0.5 * CORNER[bit] for c, bit in CUBE_EDGES])   # CORNER[bit] = unit step


def _faces() -> list[tuple[np.ndarray, list[int]]]:
    """The cube's 6 faces: outward normal and corners in cyclic order."""
    out = []
    for axis in range(3):
        b, c = [x for x in range(3) if x != axis]
        for side in (0, 1):
            ring = []
            for u, v in ((0, 0), (1, 0), (1, 1), (0, 1)):
                p = [0, 0, 0]
                p[axis], p[b], p[c] = side, u, v
                ring.append(p[0] * 4 + p[1] * 2 + p[2])
            out.append(((2 * side - 1) * np.eye(3)[axis], ring))
    return out


_FACES = _faces()
_EDGE_FACES = [frozenset(f for f, (_, ring) in enumerate(_FACES) if c in ring and c | bit in ring)
               for c, bit in CUBE_EDGES]


def _face_segments(inside: list[bool]) -> dict[int, int]:
    """Directed segments ``{from edge: to edge}`` where the surface crosses the cube's faces.

    On each face, every run of consecutive inside corners is cut off by one segment (two inside
    corners on a diagonal are separated: the solid is 6-connected, as its fill and labels). The rule
    reads only the face's own corners, so the two cubes sharing a face cut it the same way, and the
    mesh is closed. Each segment runs with the inside on its right seen from outside the cube; the
    neighbour sees it reversed, so shared edges are traversed in opposite directions."""
    nxt = {}
    for normal, ring in _FACES:
        ins = [inside[c] for c in ring]
        if all(ins) or not any(ins):
            continue
        start = next(i for i in range(4) if ins[i] and not ins[i - 1])
        for k in range(4):
            i = (start + k) % 4
            if not ins[i] or ins[i - 1]:
                continue                                           # not the first corner of a run
            run = [i]
            while ins[(run[-1] + 1) % 4]:
                run.append((run[-1] + 1) % 4)
            a = _EDGE_OF[frozenset((ring[i - 1], ring[i]))]
            b = _EDGE_OF[frozenset((ring[run[-1]], ring[(run[-1] + 1) % 4]))]
            to_inside = CORNER[[ring[j] for j in run]].mean(axis=0) - (_MID[a] + _MID[b]) / 2
            if np.cross(_MID[b] - _MID[a], to_inside) @ normal > 0:
                a, b = b, a
            nxt[a] = b
    return nxt


def _triangulate(loop: list[int]) -> list[list[int]] | None:
    """Triangles of a polygon of cube edges (in order) with no diagonal between two edges of one face:
    such a diagonal could also be drawn by the neighbour across that face, and four triangles would
    share it. None when there is no such triangulation."""
    if len(loop) == 3:
        return [loop]
    for k in range(2, len(loop)):
        a, b, c = loop[0], loop[1], loop[k]
        ok = all(not (_EDGE_FACES[x] & _EDGE_FACES[y])
                 for x, y, adjacent in ((b, c, k == 2), (c, a, k == len(loop) - 1)) if not adjacent)
        if not ok:
            continue
        left = _triangulate(loop[1:k + 1]) if k > 2 else []
        right = _triangulate([a] + loop[k:]) if k < len(loop) - 1 else []
        if left is not None and right is not None:
            return [[a, b, c]] + left + right
    return None


def _cube_table() -> np.ndarray:
    """(256, W, 3) cube-edge indices of the triangles of each inside mask (bit c: corner c), -1: none;
    counter-clockwise seen from outside."""
    cases = []
    for code in range(256):
        nxt = _face_segments([bool(code >> c & 1) for c in range(8)])
        assert sorted(nxt) == sorted(nxt.values()), code          # every crossing: one in, one out
        tris, todo = [], set(nxt)
        while todo:
            loop = [min(todo)]
            while nxt[loop[-1]] != loop[0]:
                loop.append(nxt[loop[-1]])
            todo -= set(loop)
            t = _triangulate(loop)
            assert t is not None, (code, loop)
            tris += t
        cases.append(tris)
    table = np.full((256, max(map(len, cases)), 3), -1)
    for code, tris in enumerate(cases):
        table[code, :len(tris)] = np.reshape(tris, (-1, 3))
    return table


CASES = _cube_table()                                                         # (256, W, 3)
EDGE_LOWER = np.array([c for c, _ in CUBE_EDGES])
EDGE_KIND = np.array([bit for _, bit in CUBE_EDGES])


def _as_points(points_mm, device) -> torch.Tensor:
    """(N, 3) float64 tensor on ``device`` (default: the tensor's own device, else the CPU)."""
    if isinstance(points_mm, torch.Tensor):
        dev = points_mm.device if device is None else torch.device(device)
        return points_mm.detach().to(dev, torch.float64).reshape(-1, 3)
    dev = torch.device("cpu" if device is None else device)
    return torch.as_tensor(np.asarray(points_mm, dtype=np.float64).reshape(-1, 3), device=dev)


def _cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances of float32 rows; on CUDA without the matrix-product shortcut, which TF32
    (where a process enables it) would round by tenths of a millimetre."""
    mode = "donot_use_mm_for_euclid_dist" if a.is_cuda else "use_mm_for_euclid_dist_if_necessary"
    return torch.cdist(a, b, compute_mode=mode)


def _nearest(query: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    """(Q, k) indices of the ``k`` nearest rows of ``ref`` to each row of ``query``, nearest first."""
    centre = ref.mean(dim=0)
    q, r = (query - centre).float(), (ref - centre).float()     # centred: float32 keeps ~1e-5 mm
    step = max(1, CHUNK_DISTANCES // len(r))
    return torch.cat([_cdist(q[i:i + step], r).topk(k, dim=1, largest=False).indices
                      for i in range(0, len(q), step)])


def _spacing(pts: torch.Tensor) -> torch.Tensor:
    """(N,) distance of each point to its 3rd-nearest neighbour (itself counted first), mm."""
    nn = _nearest(pts, pts, min(4, len(pts)))
    return torch.linalg.vector_norm(pts[nn[:, -1]] - pts, dim=1)


def _node_distances(pts: torch.Tensor, origin: np.ndarray, shape: tuple, grid_mm: float,
                    reach_mm: float) -> torch.Tensor:
    """(X, Y, Z) float32 distance from every grid node to the nearest point, mm: exact up to
    ``reach_mm``, ``reach_mm`` beyond.

    Each point is splatted onto the nodes of a ball around its nearest node (a scatter-min of exact
    distances): with the reach a few cells, that is tens of times fewer distances than from every
    node to every point (``cdist``), which is used instead when the ball is not smaller than the grid.
    """
    dev, n = pts.device, int(np.prod(shape))
    rel = ((pts - torch.as_tensor(origin, device=dev)) / grid_mm).float()       # grid index units
    r = int(np.ceil(reach_mm / grid_mm + 1))
    o = torch.arange(-r, r + 1, device=dev)
    ball = torch.stack(torch.meshgrid(o, o, o, indexing="ij"), dim=-1).reshape(-1, 3)
    ball = ball[torch.linalg.vector_norm(ball.float(), dim=1) <= reach_mm / grid_mm + 0.87]   # + half a diagonal
    if len(ball) >= n:
        axes = [torch.arange(m, device=dev, dtype=torch.float32) for m in shape]
        nodes = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
        step = max(1, CHUNK_DISTANCES // len(rel))
        d = torch.cat([_cdist(nodes[i:i + step], rel).amin(dim=1) for i in range(0, n, step)]) * grid_mm
        return d.clamp(max=reach_mm).reshape(shape)
    # Scatter into a grid padded by the ball's radius (no bounds checks), then crop. With the point at
    # fraction f of a cell from its node, |b - f|^2 = |b|^2 - 2 b.f + |f|^2 is one small matrix product.
    padded = [m + 2 * r for m in shape]
    strides = torch.tensor([padded[1] * padded[2], padded[2], 1], device=dev)
    out = torch.full((int(np.prod(padded)),), reach_mm, device=dev)
    base = rel.round()
    frac = rel - base
    node = _flat(base.long() + r, strides)
    ball_flat, ball_f = _flat(ball, strides), ball.float()
    ball_sq = (ball_f * ball_f).sum(dim=1)
    step = max(1, CHUNK_DISTANCES // len(ball))
    for i in range(0, len(rel), step):
        f = frac[i:i + step]
        if f.is_cuda:                  # no matrix product there: TF32, where a process enables it, is too coarse
            d2 = ((ball_f[None] - f[:, None]) ** 2).sum(dim=2)
        else:
            d2 = torch.addmm(ball_sq[None] + (f * f).sum(dim=1, keepdim=True), f, ball_f.T, alpha=-2.0)
        out.scatter_reduce_(0, (node[i:i + step, None] + ball_flat[None]).reshape(-1),
                            d2.clamp(min=0).sqrt().reshape(-1) * grid_mm, "amin")
    return out.reshape(padded)[r:r + shape[0], r:r + shape[1], r:r + shape[2]].contiguous()


def _flat(ijk: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """Flat indices of integer grid positions (a sum, not ``@``: CUDA has no integer matrix product)."""
    return (ijk * strides).sum(dim=-1)


def _dilate6(x: torch.Tensor, fill: float) -> torch.Tensor:
    """Max over each voxel and its 6 face neighbours of an (X, Y, Z) tensor (``fill`` beyond it)."""
    p = F.pad(x[None, None], (1, 1, 1, 1, 1, 1), value=fill)[0, 0]
    X, Y, Z = x.shape
    out = x
    for i, j, k in ((0, 1, 1), (2, 1, 1), (1, 0, 1), (1, 2, 1), (1, 1, 0), (1, 1, 2)):
        out = torch.maximum(out, p[i:i + X, j:j + Y, k:k + Z])
    return out


def _outside(free: torch.Tensor) -> torch.Tensor:
    """Voxels of ``free`` 6-connected to the grid border through ``free`` (flood fill)."""
    seed = torch.zeros_like(free)
    seed[[0, -1]], seed[:, [0, -1]], seed[:, :, [0, -1]] = True, True, True
    mask = free.float()
    x = (seed & free).float()
    while True:
        count = x.sum()
        for _ in range(CHECK_EVERY):
            x = _dilate6(x, 0.0) * mask
        if bool(x.sum() == count):
            return x > 0


def _keep_large_parts(solid: torch.Tensor, min_fraction: float) -> torch.Tensor:
    """``solid`` without 6-connected parts smaller than ``min_fraction`` of the largest.

    Every solid voxel takes the smallest flat index among its neighbours' labels, then its label's
    label (pointer jumping, which shortens long thin parts to a few rounds); at convergence each part
    is labelled with its smallest voxel index. Labels are float (max pooling), exact below 2**24."""
    n = solid.numel()
    dtype = torch.float32 if n < 1 << 24 else torch.float64
    idx = torch.arange(n, device=solid.device, dtype=dtype).reshape(solid.shape)
    big = torch.tensor(float(n), device=solid.device, dtype=dtype)
    lab = torch.where(solid, idx, big)
    while True:
        before = lab
        for _ in range(CHECK_EVERY // 2):
            lab = torch.where(solid, -_dilate6(-lab, -float(n)), big)
            jumped = lab.reshape(-1)[lab.reshape(-1).long().clamp(max=n - 1)].reshape(solid.shape)
            lab = torch.where(solid, jumped, big)
        if torch.equal(lab, before):
            break
    parts = lab[solid].long()
    sizes = torch.bincount(parts, minlength=n)
    keep = sizes >= min_fraction * sizes.max()
    return solid & keep[lab.reshape(-1).long().clamp(max=n - 1)].reshape(solid.shape)


def _march(field: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Marching cubes of ``field`` at 0 (no exact zeros): (V, 3) float64 vertices in grid index units
    and (T, 3) int64 triangles, counter-clockwise seen from where the field is positive. A vertex is
    the crossing on a grid edge, shared through the edge's id (lower node * 8 + axis bit)."""
    dev, shape = field.device, field.shape
    inside = field < 0
    corners = [inside[i:shape[0] - 1 + i, j:shape[1] - 1 + j, k:shape[2] - 1 + k] for i, j, k in CORNER]
    code = sum(c.to(torch.int64) << n for n, c in enumerate(corners))
    cells = torch.nonzero((code > 0) & (code < 255))                         # (C, 3) lower corners
    code = code[cells[:, 0], cells[:, 1], cells[:, 2]]
    strides = torch.tensor([shape[1] * shape[2], shape[2], 1], device=dev)
    corner_step = _flat(torch.as_tensor(CORNER, device=dev), strides)              # (8,) flat offsets
    edge_ids = (_flat(cells, strides)[:, None] + corner_step[torch.as_tensor(EDGE_LOWER, device=dev)]) * 8 \
        + torch.as_tensor(EDGE_KIND, device=dev)                              # (C, 12)
    tri_edges = torch.as_tensor(CASES, device=dev)[code]                     # (C, W, 3)
    ids = torch.gather(edge_ids, 1, tri_edges.clamp(min=0).reshape(len(cells), -1)).reshape(tri_edges.shape)
    ids = ids[tri_edges[..., 0] >= 0]                                        # (T, 3)
    uniq, tris = torch.unique(ids, return_inverse=True)
    lo, kind = uniq // 8, uniq % 8
    step = torch.stack([kind >> 2 & 1, kind >> 1 & 1, kind & 1], dim=1)
    flat = field.reshape(-1).double()
    f0, f1 = flat[lo], flat[lo + _flat(step, strides)]
    ijk = torch.stack([lo // strides[0], lo // strides[1] % shape[1], lo % shape[2]], dim=1)
    verts = ijk.double() + (f0 / (f0 - f1))[:, None] * step.double()
    return verts, tris.reshape(-1, 3)


def _gradient_at(field: torch.Tensor, ijk: torch.Tensor) -> torch.Tensor:
    """(V, 3) unit gradient of ``field`` at fractional grid positions (central differences of
    trilinear samples half a cell away, positions clamped to the grid like ``mode="nearest"``)."""
    half = 0.5 * torch.eye(3, device=ijk.device, dtype=torch.float64)
    at = torch.cat([ijk[None] + half[:, None], ijk[None] - half[:, None]])     # (2, 3, V, 3)
    v = _trilinear(field.double(), at.reshape(-1, 3)).reshape(2, 3, -1)
    g = (v[0] - v[1]).T
    return g / torch.linalg.vector_norm(g, dim=1, keepdim=True).clamp(min=1e-12)


def _trilinear(f: torch.Tensor, ijk: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of ``f`` (X, Y, Z >= 2) at fractional index positions, clamped to the grid."""
    size = torch.tensor(f.shape, device=f.device)
    strides = torch.tensor([f.shape[1] * f.shape[2], f.shape[2], 1], device=f.device)
    p = torch.minimum(ijk.clamp(min=0), size - 1)
    i0 = torch.minimum(p.floor().long(), size - 2)
    w = (p - i0)[:, None, :]                                                    # (S, 1, 3)
    corner = torch.as_tensor(CORNER, device=f.device)                           # (8, 3)
    weight = torch.where(corner.bool(), w, 1 - w).prod(dim=2)                   # (S, 8)
    return (weight * f.reshape(-1)[_flat(i0[:, None, :] + corner, strides)]).sum(dim=1)


def _project_to_local_planes(verts, normals, pts, k: int, iterations: int = 6):
    """Each vertex onto the least-squares plane of its ``k`` nearest points (see the scipy mesher):
    the plane normal is the covariance's smallest eigenvector, by power iteration on
    ``trace(cov) I - cov`` from the vertex normal."""
    nb = pts[_nearest(verts, pts, k)]                                       # (V, k, 3)
    c = nb.mean(dim=1)
    if k >= 3:
        d = nb - c[:, None, :]
        cov = d.transpose(1, 2) @ d
        m = cov.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None] * torch.eye(3, device=cov.device,
                                                                            dtype=cov.dtype) - cov
        for _ in range(iterations):
            normals = (m * normals[:, None, :]).sum(dim=2)
            normals = normals / torch.linalg.vector_norm(normals, dim=1, keepdim=True).clamp(min=1e-12)
    return verts - ((verts - c) * normals).sum(dim=1, keepdim=True) * normals


def _solid_field(pts, grid_mm, offset, max_cells, min_part_fraction):
    """Grid origin, spacing and the (X, Y, Z) float32 field ``udf - offset`` with its sign fixed by
    the filled, cleaned solid (negative inside) and no exact zeros; None when nothing is solid."""
    ends = torch.stack([pts.min(dim=0).values, pts.max(dim=0).values]).cpu().numpy()
    origin, shape, grid_mm = _df._grid(ends, grid_mm, offset + 3 * grid_mm, max_cells)
    # exact where the marching and the gradient samples read it (within 2.25 cells of the level)
    field = _node_distances(pts, origin, shape, grid_mm, offset + 2.25 * grid_mm) - offset
    # Cavities enclosed by the shell are inside; their depth does not matter, only the sign.
    solid = _keep_large_parts(~_outside(field >= 0), min_part_fraction)
    if not bool(solid.any()):
        return None
    field = torch.where(solid & (field >= 0), -grid_mm, field)
    field = torch.where(~solid & (field <= 0), grid_mm, field)       # also lifts exact zeros outside
    return origin, grid_mm, field


def torch_distance_field_mesh(points_mm, *, grid_mm: float = 1.0, offset_mm: float | None = None,
                              project_k: int = 6, min_part_fraction: float = 0.05,
                              max_cells: int = MAX_CELLS, device=None) -> tuple[np.ndarray, np.ndarray]:
    """Closed triangle mesh of the surface the points sample, computed on ``device``.

    Parameters and results as :func:`usx_stream.surface.distance_field.distance_field_mesh`;
    ``points_mm`` may also be a torch tensor, and ``device`` (a torch device or its name; default:
    the tensor's device, else the CPU) is where the work runs. The results are numpy (float64
    vertices, int64 triangles) on the host.
    """
    pts = _as_points(points_mm, device)
    empty = np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    if len(pts) < 4:
        return empty
    spacing = _spacing(pts)
    inlier = spacing <= _df.OUTLIER_SPACING_FACTOR * torch.quantile(spacing, 0.5)     # numpy's median
    if not bool(inlier.all()):
        pts, spacing = pts[inlier], spacing[inlier]
        log.debug("surface: dropped %d isolated points", int((~inlier).sum()))
    offset = (float(max(1.15 * torch.quantile(spacing, 0.99).item(), grid_mm)) if offset_mm is None
              else float(offset_mm))
    solid = _solid_field(pts, grid_mm, offset, max_cells, min_part_fraction)
    if solid is None:
        return empty
    origin, grid_mm, field = solid
    ijk, tris = _march(field)
    normals = _gradient_at(field, ijk)
    verts = ijk * grid_mm + torch.as_tensor(origin, device=ijk.device) - offset * normals
    if project_k > 0:
        verts = _project_to_local_planes(verts, normals, pts, min(project_k, len(pts)))
    return verts.cpu().numpy(), tris.cpu().numpy().astype(np.int64)
