"""``python -m usx_stream.train [OPTIONS]``: ``usx-stream train`` as a module, the form ``torchrun`` starts.

Example::

    torchrun --nproc-per-node 2 -m usx_stream.train --data train.h5 --batch-size 16 --device cuda
"""

from __future__ import annotations

import sys

from ..cli import main


def run(argv: list[str] | None = None) -> int:
    """``usx-stream train`` with ``argv`` (default: this process's arguments)."""
    return main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(run())
