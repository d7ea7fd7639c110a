"""Lazy imports of optional heavy dependencies, with the fixes they need on bare machines."""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)


def import_open3d():
    """Import open3d; when the system lacks libusb-1.0 (open3d links it), preload it from the
    ``libusb-package`` wheel and retry, so no root-installed Debian package is needed."""
    try:
        import open3d  # noqa: F401
        return open3d
    except (ImportError, OSError) as first:
        if "libusb" not in str(first):
            raise
        try:
            import libusb_package
        except ImportError as e:
            raise ImportError(
                "open3d needs libusb-1.0: install Debian 'libusb-1.0-0' or pip 'libusb-package'"
            ) from e
        path = libusb_package.get_library_path()
        if path is None:
            raise ImportError("libusb-package ships no libusb library for this platform") from first
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        log.debug("preloaded libusb from %s for open3d", path)
        import open3d
        return open3d
