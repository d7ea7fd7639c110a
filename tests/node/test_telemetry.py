"""Telemetry: percentiles, throughput, drops, concurrency, reports."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from usx_stream.node.telemetry import Telemetry


class StepClock:
    """A clock that advances by a fixed step each time it is read (deterministic throughput)."""

    def __init__(self, step: float) -> None:
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def test_percentiles_match_numpy():
    tel = Telemetry()
    values = np.random.default_rng(0).exponential(0.02, size=1000)
    for v in values:
        tel.record("complete", v)
    s = tel.report()["stages"]["complete"]
    for q in (50, 95, 99):
        assert s[f"p{q}_ms"] == pytest.approx(np.percentile(values, q) * 1e3)
    assert s["count"] == 1000 and s["max_ms"] == pytest.approx(values.max() * 1e3)
    assert s["mean_ms"] == pytest.approx(values.mean() * 1e3)


def test_window_keeps_latest_samples_but_totals_all():
    tel = Telemetry(window=10)
    for v in [1.0] * 50 + [0.001] * 10:
        tel.record("s", v)
    s = tel.report()["stages"]["s"]
    assert s["count"] == 60 and s["p99_ms"] == pytest.approx(1.0)
    assert s["max_ms"] == pytest.approx(1000.0)


def test_throughput_from_record_times():
    tel = Telemetry(clock=StepClock(0.1))    # one record every 0.1 s of the fake clock
    for _ in range(11):
        tel.record("ingest", 0.001)
    assert tel.report()["stages"]["ingest"]["throughput_hz"] == pytest.approx(10.0)


def test_empty_stage_and_drops():
    tel = Telemetry()
    tel.drop("ingest", 3)
    s = tel.report()["stages"]["ingest"]
    assert s == {"count": 0, "dropped": 3, "p50_ms": None, "p95_ms": None, "p99_ms": None,
                 "mean_ms": None, "max_ms": None, "throughput_hz": None}
    assert "ingest" in tel.summary()


def test_invalid_values_are_rejected():
    tel = Telemetry()
    with pytest.raises(ValueError, match="s: latency must be >= 0 s, got -1"):
        tel.record("s", -1)
    with pytest.raises(ValueError, match="drop count must be >= 0"):
        tel.drop("s", -2)
    with pytest.raises(ValueError, match="Telemetry.window: must be >= 1, got 0"):
        Telemetry(window=0)


def test_time_context_records_even_on_error():
    tel = Telemetry()
    with pytest.raises(RuntimeError):
        with tel.time("mesh"):
            raise RuntimeError("boom")
    with tel.time("mesh"):
        pass
    assert tel.stage("mesh").count == 2


def test_concurrent_recording_loses_nothing():
    tel = Telemetry(window=100)
    start = threading.Barrier(4)

    def work():
        start.wait(timeout=10)
        for _ in range(2000):
            tel.record("s", 0.001)
            tel.count("frames")
            tel.drop("s")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    rep = tel.report()
    assert rep["stages"]["s"]["count"] == 8000 and rep["stages"]["s"]["dropped"] == 8000
    assert rep["counters"]["frames"] == 8000


def test_json_report_and_summary(tmp_path):
    tel = Telemetry()
    tel.record("publish", 0.004)
    tel.count("surfaces_sent", 5)
    path = tel.write_json(tmp_path / "out" / "telemetry.json")
    data = json.loads(path.read_text())
    assert data["stages"]["publish"]["p50_ms"] == pytest.approx(4.0)
    assert data["counters"] == {"surfaces_sent": 5}
    text = tel.summary()
    assert "publish" in text and "4.00" in text and "surfaces_sent" in text
