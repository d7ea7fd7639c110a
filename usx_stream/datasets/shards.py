"""Sharded generation: which part of a dataset run a process makes, and what lets the parts be merged.

``usx-stream dataset --shard I/N`` makes part ``I`` of ``N`` (processes or machines), ``--merge`` joins them
into exactly the file the unsharded command writes (:func:`usx_stream.train.data.merge_pairs`).
"""

from __future__ import annotations

from ..errors import InputError


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (0-based part ``i`` of ``n``) as ``(i, n)``; :class:`InputError` when malformed."""
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise InputError(f"--shard: expected I/N (part I of N, 0-based), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard: part {i} of {n}: I must be in 0..N-1")
    return i, n


def shard_bounds(n_items: int, shard: tuple[int, int] | None) -> tuple[int, int]:
    """``[start, stop)`` of the source items (spines, sessions, files) part ``shard = (i, n)`` generates.

    The parts are contiguous and disjoint and tile ``[0, n_items)`` in order, so the parts of a sharded
    generation, concatenated in part order (``usx-stream dataset --merge``), are the unsharded file.
    """
    if shard is None:
        return 0, n_items
    i, n = shard
    if n > n_items:
        raise InputError(f"--shard: {n} parts for {n_items} items; use at most {n_items}")
    return i * n_items // n, (i + 1) * n_items // n


def shard_attrs(n_items: int, shard: tuple[int, int] | None) -> dict:
    """File attributes that let :func:`usx_stream.train.data.merge_pairs` check a set of parts."""
    attrs: dict = {"items": int(n_items)}
    if shard is not None:
        attrs["shard"] = [int(shard[0]), int(shard[1])]
        attrs["shard_items"] = list(shard_bounds(n_items, shard))
    return attrs
