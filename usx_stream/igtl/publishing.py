"""The one interface every surface publisher implements (OpenIGTLink POLYDATA, ZeroMQ), as the node uses it."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..frames import Surface


@runtime_checkable
class Publisher(Protocol):
    """What the node calls on each of its outputs.

    ``publish`` sends one completed surface (mm, in ``surface.frame``); ``publish_status`` the node's one-line
    status; ``take_landmarks`` returns level centres the display sent back since the last call
    (``{"L3": (3,) mm}``, empty for outputs that receive nothing); ``close`` releases the sockets.
    """

    def publish(self, surface: Surface) -> object: ...

    def publish_status(self, text: str) -> object: ...

    def take_landmarks(self) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...
