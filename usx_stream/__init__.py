"""usx-stream: tracked ultrasound + one lateral X-ray -> completed vertebra surfaces, live.

Importing the package is cheap: heavy dependencies (torch, open3d, pyigtl, zmq) are imported by the
modules that need them, never here.
"""

__version__ = "0.1.0"
