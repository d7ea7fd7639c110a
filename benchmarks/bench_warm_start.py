"""Warm start: the cost of the first compounded frame and the first update, with and without the node's
warm-up, each in a fresh process with an empty numba cache (as on a fresh clone).

A simulated session (launch/demo.toml's grid, 30 fps) is replayed through the node; the figures are the
first sample of the ``compound`` and ``end_to_end`` stages against the median of the rest, and the
warm-up time itself (reported apart, before the first frame is accepted).

    python benchmarks/bench_warm_start.py                 # both modes, fresh numba cache each
    python benchmarks/bench_warm_start.py --json bench_out/warm_start.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _one(warm: bool) -> dict:
    import numpy as np

    from usx_stream.node.assemble import default_launch_dir, make_engines
    from usx_stream.node.launch import load_launch
    from usx_stream.node.pipeline import Node
    from usx_stream.sim.session import simulate_session, write_session
    from usx_stream.sources.replay import SequenceReplay
    from usx_stream.xray.cache import XrayCache

    cfg = load_launch(default_launch_dir() / "demo.toml").with_overrides(
        {"record.enabled": False, "publish.igtl_enabled": False, "completion.period_s": 0.25})
    session = simulate_session(7, n_frames=240)
    files = write_session(session, tempfile.mkdtemp(prefix="usx-warm-"))
    xray = XrayCache(geometry=session.xray.geometry)
    xray.update_from_xray_image(session.xray)
    node = Node(cfg, source=SequenceReplay(files["sequence"], rate=30.0), engines=make_engines(cfg), xray=xray,
                calibration=session.calibration)
    if not warm:
        node.warm_up = lambda: 0.0
    node.start()
    try:
        node.wait_source_done(timeout=120)
    finally:
        node.stop()
    tel = node.telemetry
    compound, e2e = tel.stage("compound").samples(), tel.stage("end_to_end").samples()
    return {"warm_up_s": (tel.stage("warm_up").samples() or [0.0])[0],
            "first_frame_compound_ms": 1e3 * compound[0], "median_compound_ms": 1e3 * float(np.median(compound[1:])),
            "first_update_ms": 1e3 * e2e[0], "median_update_ms": 1e3 * float(np.median(e2e[1:])),
            "p95_update_ms": 1e3 * float(np.percentile(e2e, 95)), "updates": len(e2e)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--one", choices=("warm", "cold"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(_one(args.one == "warm")))
        return 0
    out = {}
    for mode in ("cold", "warm"):
        with tempfile.TemporaryDirectory(prefix="usx-numba-") as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(REPO))
            res = subprocess.run([sys.executable, __file__, "--one", mode], env=env, capture_output=True, text=True,
                                 check=True)
            out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    for mode, r in out.items():
        print(f"{mode:5s} warm-up {r['warm_up_s']:.2f} s | first frame {r['first_frame_compound_ms']:.1f} ms "
              f"(median {r['median_compound_ms']:.1f}) | first update {r['first_update_ms']:.0f} ms "
              f"(median {r['median_update_ms']:.0f}, p95 {r['p95_update_ms']:.0f}, {r['updates']} updates)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
