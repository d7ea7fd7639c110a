"""argparse types that check a value's range, so a bad option is a usage error naming it (exit 2)."""

from __future__ import annotations

import argparse


def in_range(kind, low=None, high=None, *, low_open: bool = False, high_open: bool = False):
    """``kind(text)`` within [low, high] (an end ``None``: unbounded; ``*_open``: that end excluded)."""
    def parse(text: str):
        value = kind(text)
        ok = ((low is None or (value > low if low_open else value >= low))
              and (high is None or (value < high if high_open else value <= high)))
        if not ok:
            if high is None:
                raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low}, got {text!r}")
            lo, hi = "(" if low_open else "[", ")" if high_open else "]"
            raise argparse.ArgumentTypeError(f"must be in {lo}{low}, {high}{hi}, got {text!r}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


def non_negative(kind):
    """``kind(text)`` that must be >= 0."""
    return in_range(kind, 0)


positive_float = in_range(float, 0, low_open=True)
positive_int = in_range(int, 0, low_open=True)


def tcp_port(*, allow_zero: bool):
    """A TCP port; 0 ("any free one") only where a server binds (``allow_zero``), never for a client."""
    low = 0 if allow_zero else 1

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= 65535:
            raise argparse.ArgumentTypeError(f"expected a port {low}..65535, got {text!r}")
        return value
    parse.__name__ = "int"
    return parse
