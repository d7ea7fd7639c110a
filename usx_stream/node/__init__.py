"""The streaming node: the launch schema, ingest, surface update, pipeline (threads, queues, shutdown),
the one constructor (:func:`~usx_stream.node.assemble.build_node`), recording and telemetry.

The node knows no demo, no command line and no datasets; the numeric stages it joins (compound, bone,
xray, completion, surface) never import it.
"""
