"""The error type that blames the input, not the code.

A file, a launch-file key or a command-line value that is missing, malformed or inconsistent raises
:class:`InputError` (a ``ValueError``) at the edge where it is read, with a message that names the file
(or key), the field and the value. ``usx-stream`` prints such an error as one line and exits with
status 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input: the message names the file or key, the field and the value, on one line."""
