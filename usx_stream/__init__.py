"""usx-stream: tracked ultrasound + one lateral X-ray -> completed vertebra surfaces, live.

The library surface (README, "Use as a library"):

- core types: :class:`TrackedFrame`, :class:`Volume`, :class:`XrayImage`, :class:`Surface`, :data:`LEVELS`;
- :func:`reconstruct`: PLUS-compatible volume reconstruction of a sequence file, a list or an iterator of
  frames (``usx_stream.compound``);
- :class:`CompletionEngine`: the completion network, ``CompletionEngine.from_default("multimodal")``;
- :func:`load_launch` and :func:`build_node`: the streaming node from a launch file.

Importing the package is cheap: heavy dependencies (torch, open3d, pyigtl, zmq, numba) are imported by the
modules that need them, when a name above is first used, never here.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "TrackedFrame": "usx_stream.frames", "Volume": "usx_stream.frames", "XrayImage": "usx_stream.frames",
    "Surface": "usx_stream.frames", "LEVELS": "usx_stream.frames",
    "reconstruct": "usx_stream.compound", "Reconstructor": "usx_stream.compound",
    "ReconstructionConfig": "usx_stream.compound",
    "CompletionEngine": "usx_stream.completion.engine",
    "load_launch": "usx_stream.node.launch", "build_node": "usx_stream.node.assemble",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'usx_stream' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
