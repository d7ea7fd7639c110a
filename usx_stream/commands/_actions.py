"""Commands with actions (``usx-stream error-head fit|check``, ``usx-stream shape-model build|sample``)."""

from __future__ import annotations

import argparse


def add_actions(parser: argparse.ArgumentParser, actions: dict[str, str]) -> list[argparse.ArgumentParser]:
    """One sub-parser per entry of ``actions`` (name -> one-line help), in order; the one given is ``args.action``.

    An action is required: ``usx-stream error-head`` alone is a usage error (exit 2) that lists them.
    """
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    return [sub.add_parser(name, help=help_, description=help_) for name, help_ in actions.items()]
