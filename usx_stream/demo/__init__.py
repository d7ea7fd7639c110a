"""The built-in demo: a simulated phantom session served live, streamed through the node, scored against its
ground truth and drawn (:func:`~usx_stream.demo.run.run_demo`; ``usx-stream demo``)."""
