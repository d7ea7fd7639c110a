"""The streaming node: stages, threads, queues and shutdown, wired in one place (:meth:`Node.__init__`).

::

    source ──(bounded queue, drops counted)──▶ ingest thread: IngestStage (bone detection + compounding)
                                                   │   XrayImage items ──▶ XrayCache
                                                   ▼ (shared volume; snapshot on demand)
    completion thread (every completion.period_s, latest-wins): SurfaceUpdater ──▶ publishers + recorder

Ingest never waits for completion: the completion thread takes a snapshot of the volume whenever it is
free, so a slow update delays only the next update. Latency "newest frame received → surface on the wire"
is measured per update from the arrival of the newest frame in the snapshot to the return of the publish
call (``telemetry`` stage ``end_to_end``; ``end_to_end_completing`` counts only the updates that completed at
least one level, the others publish surfaces kept by ``completion.reuse_change``, see ``node.reuse``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import numpy as np

from ..frames import TrackedFrame, XrayImage
from .ingest import IngestStage
from .recording import SessionRecorder
from .telemetry import Telemetry
from .update import SurfaceUpdater, UpdateResult
from ..xray.cache import XrayCache

log = logging.getLogger(__name__)


class Node:
    """The usx-stream node.

    Parameters
    ----------
    cfg : LaunchConfig
    source : FrameSource
        Started and stopped by the node.
    engines : dict
        ``{"multimodal": CompletionEngine, "us_only": CompletionEngine}``.
    xray : XrayCache, optional
        Pre-filled cache (an X-ray from a file or the simulator); live X-rays from the source update it.
    publishers : list of :class:`~usx_stream.igtl.publishing.Publisher`
        Outputs (OpenIGTLink POLYDATA, ZeroMQ): surfaces, the status line, landmarks coming back.
    calibration : TransformRepository, optional
        ImageToProbe etc. when frames do not carry ImageToReference.
    """

    def __init__(self, cfg, *, source, engines: dict, xray: XrayCache | None = None, publishers=(),
                 calibration=None, telemetry: Telemetry | None = None) -> None:
        self.cfg = cfg
        self.telemetry = telemetry or Telemetry(window=cfg.telemetry.window)
        self.source = source
        self.xray = xray or XrayCache()
        self.ingest = IngestStage(cfg.compound, cfg.bone, image_to_reference=cfg.source.image_to_reference,
                                  calibration=calibration, bootstrap_frames=cfg.completion.min_frames,
                                  telemetry=self.telemetry)
        self.updater = SurfaceUpdater(engines, bone=cfg.bone, xray_cfg=cfg.xray, surface=cfg.surface,
                                      publish_frame=cfg.publish.frame, telemetry=self.telemetry,
                                      seed=int(cfg.source.seed), completion=cfg.completion)
        self.publishers = list(publishers)
        self.recorder = (SessionRecorder(cfg.record, chunk_frames=cfg.record.chunk_frames,
                                         max_chunk_s=cfg.record.max_chunk_s) if cfg.record.enabled else None)
        self.latest: UpdateResult | None = None     # written by the completion thread only
        self.updates = 0
        self.on_update: list[Callable[[UpdateResult], None]] = []
        self._stop = threading.Event()
        self._ingest_done = threading.Event()
        self._updated = threading.Condition()
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None
        self.status = ""                            # last status sent (completion thread only)
        self._failures_logged: set[str] = set()
        self._landmarks_changed = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Node":
        self.warm_up()
        self.source.start()
        for target, name in ((self._ingest_loop, "ingest"), (self._completion_loop, "completion")):
            t = threading.Thread(target=self._guard(target), name=f"usx-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def warm_up(self) -> float:
        """Compile the compounding kernels and run the mesher once before the first frame is accepted, so
        the first frames and updates cost what the rest cost; returns the seconds it took (telemetry stage
        ``warm_up``, reported apart from the stream's figures). The engines warm up when they are built."""
        from ..surface.mesh import mesh_points

        t0 = time.perf_counter()
        self.ingest.warm_up()
        sphere = np.random.default_rng(0).normal(size=(2048, 3))
        sphere *= 20.0 / np.linalg.norm(sphere, axis=1, keepdims=True)
        s = self.cfg.surface
        mesh_points(sphere, method=s.method, triangle_budget=s.triangle_budget, grid_mm=s.grid_mm,
                    offset_mm=s.offset_mm or None, project_k=s.project_k, poisson_depth=s.poisson_depth)
        seconds = time.perf_counter() - t0
        self.telemetry.record("warm_up", seconds)
        log.info("warm-up: compounding kernels and mesher ready in %.2f s", seconds)
        return seconds

    def stop(self) -> None:
        """Stop every stage and close every socket; safe to call twice and from a signal handler's thread."""
        self._stop.set()
        self.source.stop()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=10.0)
        self.updater.close()
        for p in self.publishers:
            p.close()
        self.publishers = []
        if self.recorder is not None:
            self.recorder.close()
            for name, value in self.recorder.stats().items():
                if isinstance(value, int) and value:
                    self.telemetry.set_counter(f"record_{name}", value)

    def wait_source_done(self, timeout: float | None = None) -> bool:
        """Block until the source is finished and every frame it gave is compounded."""
        return self._ingest_done.wait(timeout)

    def wait_update(self, after: int, timeout: float | None = None) -> bool:
        """Block until more than ``after`` updates have been published."""
        with self._updated:
            return self._updated.wait_for(lambda: self.updates > after or self._stop.is_set(), timeout)

    def _guard(self, target):
        def run():
            try:
                target()
            except BaseException as e:  # a dead stage must stop the node loudly, not hang it
                self.error = e
                log.exception("stage %s failed", threading.current_thread().name)
                self._stop.set()
                with self._updated:
                    self._updated.notify_all()
        return run

    # ------------------------------------------------------------------ threads
    def _ingest_loop(self) -> None:
        while not self._stop.is_set():
            item = self.source.get(timeout=0.1)
            if item is None:
                if self.recorder is not None:  # a paused stream still gets its held frames written
                    self.recorder.flush_due()
                if self.source.finished:
                    if self.source.error is not None:
                        raise RuntimeError("frame source failed") from self.source.error
                    self.ingest.flush()
                    self._ingest_done.set()
                    return
                continue
            arrival = time.monotonic()
            if isinstance(item, XrayImage):
                if self.recorder is not None:  # the input as received, accepted or not
                    self.recorder.add_xray(item)
                try:
                    self.xray.update_from_xray_image(item)
                except ValueError:
                    # a bad X-ray from the network must not stop the node: the cache keeps its last good
                    # state, counts the rejection and logs the reason (field and value)
                    self.telemetry.count("xray_rejected")
            elif isinstance(item, TrackedFrame):
                self.ingest.add(item, arrival_s=arrival)
                if self.recorder is not None:
                    self.recorder.add_frame(item)

    def _completion_loop(self) -> None:
        period = self.cfg.completion.period_s
        last_frames = -1
        while not self._stop.wait(period if last_frames >= 0 else 0.05):
            self._take_landmarks()
            pasted = self.ingest.frames_pasted
            if pasted < self.cfg.completion.min_frames and not self._ingest_done.is_set():
                # one state, not one per frame: the count would change the status (and log it) 30 times a second
                self.set_status(f"compounding the first {self.cfg.completion.min_frames} frames"
                                if pasted or self.ingest.frames_received else "waiting for frames from the source")
                continue
            if pasted == last_frames and not self._landmarks_changed:
                continue  # nothing new since the last update: no work, no duplicate surfaces
            last_frames = pasted
            self._landmarks_changed = False
            try:
                self.run_update()
            except (ValueError, ArithmeticError, IndexError, MemoryError, RuntimeError) as e:
                # One bad update (a degenerate volume, a failed solve) must not stop the node: the next
                # snapshot gets a fresh try. Programming errors (TypeError, AttributeError...) still stop it.
                self.telemetry.count("updates_failed")
                self.set_status(f"update failed: {e}")
                key = type(e).__name__
                if key not in self._failures_logged:
                    self._failures_logged.add(key)
                    log.warning("update failed (%s: %s); the node goes on with the next snapshot (later %s "
                                "failures are only counted)", key, e, key)

    # ------------------------------------------------------------------ status and landmarks
    def set_status(self, text: str) -> None:
        """Tell the user what the node is doing or waiting for: logged once per change, sent to every
        publisher (OpenIGTLink STRING, ZeroMQ ``status`` topic; ``publish.status_messages``) and kept in
        the telemetry report (``state.status``)."""
        if text == self.status:
            return
        self.status = text
        log.info("status: %s", text)
        self.telemetry.set_state("status", text)
        if not self.cfg.publish.status_messages:
            return
        for p in self.publishers:
            p.publish_status(text)

    def _take_landmarks(self) -> None:
        """Level centres sent by the navigation display (POINT messages named L1..L5) replace the launch
        file's landmarks, level by level."""
        for p in self.publishers:
            points = p.take_landmarks()
            if points:
                self.updater.landmarks.update(points)
                self._landmarks_changed = True
                log.info("level landmarks received: %s", ", ".join(
                    f"{lv} {np.round(c, 1).tolist()}" for lv, c in sorted(points.items())))

    def run_update(self, *, force_fusion: str | None = None) -> UpdateResult | None:
        """One update on the newest snapshot, published; also callable directly (tests, the demo)."""
        volume, info = self.ingest.snapshot()
        if volume is None:
            return None
        xray = self.xray.snapshot()
        result = self.updater.update(volume, beam_direction=info["beam_direction"], xray=xray,
                                     timestamp=info["timestamp"], force_fusion=force_fusion,
                                     xray_rejected=None if xray.ready else self.xray.last_error)
        self.set_status(result.status)
        with self.telemetry.time("publish"):
            for surface in result.surfaces.values():
                for p in self.publishers:
                    p.publish(surface)
        if result.surfaces:
            latency = time.monotonic() - info["arrival_s"]
            self.telemetry.record("end_to_end", latency)
            if result.completed:
                self.telemetry.record("end_to_end_completing", latency)
        if self.recorder is not None:
            self.recorder.add_surfaces(result.surfaces)
        self.latest = result
        for callback in self.on_update:
            callback(result)
        with self._updated:
            self.updates += 1
            self._updated.notify_all()
        return result
