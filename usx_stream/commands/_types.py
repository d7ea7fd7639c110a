"""argparse types that check a value's range, so a bad option is a usage error naming it (exit 2)."""

from __future__ import annotations

import argparse


def non_negative(kind):
    """``kind(text)`` that must be >= 0."""
    def parse(text: str):
        value = kind(text)
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


positive_float.__name__ = "float"


def positive_int(text: str) -> int:
    value = int(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


positive_int.__name__ = "int"


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
