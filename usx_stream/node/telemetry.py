"""Per-stage latency, throughput and drop counters, and their reports.

Every stage of the node records how long each item took (``record`` or the ``time`` context manager),
counts items it had to drop, and the node turns that into p50/p95/p99, throughput and a JSON report.
All methods are thread-safe: stages run in their own threads and record concurrently.

>>> tel = Telemetry()
>>> with tel.time("compound"):
...     pass
>>> tel.stage("compound").count
1
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

PERCENTILES = (50, 95, 99)


class StageRecorder:
    """Latencies of one stage: the last ``window`` samples (for percentiles) plus running totals.

    Shared by every thread that records into this stage; ``_lock`` guards all fields.
    """

    def __init__(self, name: str, *, window: int = 10000, clock: Callable[[], float] = time.monotonic) -> None:
        if window < 1:
            raise ValueError(f"StageRecorder.window: must be >= 1, got {window}")
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._samples: deque[float] = deque(maxlen=window)   # seconds
        self._times: deque[float] = deque(maxlen=window)     # clock() at each record, s
        self._count = 0
        self._total_s = 0.0
        self._max_s = 0.0
        self._dropped = 0
        self._first_t: float | None = None

    def record(self, seconds: float) -> None:
        """Add one latency sample, seconds (>= 0)."""
        if not seconds >= 0:
            raise ValueError(f"{self.name}: latency must be >= 0 s, got {seconds!r}")
        now = self._clock()
        with self._lock:
            self._samples.append(float(seconds))
            self._times.append(now)
            self._count += 1
            self._total_s += seconds
            self._max_s = max(self._max_s, seconds)
            if self._first_t is None:
                self._first_t = now

    def samples(self) -> list[float]:
        """The kept samples, oldest first, seconds."""
        with self._lock:
            return list(self._samples)

    def drop(self, n: int = 1) -> None:
        """Count ``n`` items this stage had to drop."""
        if n < 0:
            raise ValueError(f"{self.name}: drop count must be >= 0, got {n}")
        with self._lock:
            self._dropped += n

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._dropped

    def stats(self) -> dict[str, float | int | None]:
        """Latency figures in ms over the window, totals over the whole run, throughput in items/s.

        ``throughput_hz`` is the number of samples in the window divided by the time they span
        (None with fewer than two samples).
        """
        with self._lock:
            samples = np.fromiter(self._samples, dtype=np.float64, count=len(self._samples))
            times = (self._times[0], self._times[-1]) if self._times else None
            n_window = len(self._samples)
            count, total, mx, dropped = self._count, self._total_s, self._max_s, self._dropped
        out: dict[str, float | int | None] = {"count": count, "dropped": dropped}
        if n_window:
            p = np.percentile(samples, PERCENTILES)
            out.update({f"p{q}_ms": float(v) * 1e3 for q, v in zip(PERCENTILES, p)})
            out["mean_ms"] = total / count * 1e3
            out["max_ms"] = mx * 1e3
        else:
            out.update({f"p{q}_ms": None for q in PERCENTILES})
            out.update(mean_ms=None, max_ms=None)
        span = times[1] - times[0] if times else 0.0
        out["throughput_hz"] = (n_window - 1) / span if n_window > 1 and span > 0 else None
        return out


class Telemetry:
    """A set of named stage recorders and counters, created on first use.

    Parameters
    ----------
    window : int
        Latency samples kept per stage for the percentiles.
    clock : callable
        Monotonic clock in seconds (``time.monotonic``); injectable for deterministic tests.
    """

    def __init__(self, *, window: int = 10000, clock: Callable[[], float] = time.monotonic) -> None:
        if window < 1:
            raise ValueError(f"Telemetry.window: must be >= 1, got {window}")
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()    # guards the two dicts below (not the recorders' contents)
        self._stages: dict[str, StageRecorder] = {}
        self._counters: dict[str, int] = {}
        self._state: dict[str, str] = {}
        self._started = clock()

    def stage(self, name: str) -> StageRecorder:
        """The recorder of stage ``name`` (created on first use)."""
        with self._lock:
            rec = self._stages.get(name)
            if rec is None:
                rec = self._stages[name] = StageRecorder(name, window=self._window, clock=self._clock)
            return rec

    def record(self, stage: str, seconds: float) -> None:
        """Add a latency sample of ``seconds`` to ``stage``."""
        self.stage(stage).record(seconds)

    def drop(self, stage: str, n: int = 1) -> None:
        """Count ``n`` items dropped by ``stage``."""
        self.stage(stage).drop(n)

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the free counter ``name`` (frames received, surfaces sent, ...)."""
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n

    def set_counter(self, name: str, value: int) -> None:
        """Set the free counter ``name`` to ``value`` (totals kept elsewhere, e.g. the recorder's)."""
        with self._lock:
            self._counters[name] = int(value)

    def set_state(self, name: str, value: str) -> None:
        """Keep the latest ``value`` of state ``name`` (e.g. the node's status line) for the report."""
        with self._lock:
            self._state[name] = str(value)

    @contextmanager
    def time(self, stage: str) -> Iterator[None]:
        """Record the wall time spent in the ``with`` block under ``stage`` (also when it raises)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.record(stage, time.perf_counter() - t0)

    def report(self) -> dict:
        """JSON-ready report: ``{"uptime_s", "stages": {name: stats}, "counters": {...}, "state": {...}}``."""
        with self._lock:
            stages = dict(self._stages)
            counters = dict(self._counters)
            state = dict(self._state)
        return {
            "uptime_s": self._clock() - self._started,
            "stages": {name: rec.stats() for name, rec in sorted(stages.items())},
            "counters": dict(sorted(counters.items())),
            "state": state,
        }

    def write_json(self, path: str | Path) -> Path:
        """Write :meth:`report` to ``path`` (parents created) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.report(), indent=2) + "\n")
        return path

    def summary(self) -> str:
        """A fixed-width text table: stage, count, dropped, p50/p95/p99/max ms, throughput."""
        rep = self.report()
        head = f"{'stage':<20} {'count':>8} {'dropped':>8} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} " \
               f"{'max ms':>9} {'rate Hz':>8}"
        lines = [head, "-" * len(head)]

        def fmt(v, width, digits=2):
            return f"{'-':>{width}}" if v is None else f"{v:>{width}.{digits}f}"

        for name, s in rep["stages"].items():
            lines.append(f"{name:<20} {s['count']:>8d} {s['dropped']:>8d} {fmt(s['p50_ms'], 9)} "
                         f"{fmt(s['p95_ms'], 9)} {fmt(s['p99_ms'], 9)} {fmt(s['max_ms'], 9)} "
                         f"{fmt(s['throughput_hz'], 8, 1)}")
        for name, n in rep["counters"].items():
            lines.append(f"{name:<20} {n:>8d}")
        for name, value in rep["state"].items():
            lines.append(f"{name}: {value}")
        lines.append(f"uptime {rep['uptime_s']:.1f} s")
        return "\n".join(lines)
