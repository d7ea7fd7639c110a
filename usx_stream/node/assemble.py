"""Build a :class:`~usx_stream.node.pipeline.Node` and its parts from a launch file.

Each factory reads one launch-file table; heavy imports (torch, zmq, the sockets) happen here, when a node
is actually built, never at package import.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .launch import ConfigError, LaunchConfig

log = logging.getLogger(__name__)


def make_source(cfg: LaunchConfig):
    """The frame source of ``[source]``: a PlusServer connection or a sequence-file replay."""
    s = cfg.source
    if s.kind == "igtl":
        from ..igtl.options import TransportOptions
        from ..igtl.receiver import ReceiverConfig
        from ..sources.igtl_source import IgtlFrameSource

        rc = ReceiverConfig(image_device=s.image_device, xray_device=cfg.xray.image_device,
                            xray_labelmap_device=cfg.xray.labelmap_device)
        return IgtlFrameSource(s.host, s.port, config=rc, queue_size=s.queue_frames,
                               options=TransportOptions(body_timeout_s=s.body_timeout_s),
                               connect_timeout_s=s.connect_timeout_s,
                               backoff_s=(min(0.05, s.reconnect_interval_s), s.reconnect_interval_s))
    if s.kind == "replay":
        from ..sources.replay import SequenceReplay

        return SequenceReplay(s.path, rate=None, speed=s.speed, loop=s.loop, queue_size=s.queue_frames)
    raise ValueError(f"source.kind: {s.kind!r} is built by the caller (usx-stream demo simulates the session)")


def make_calibration(cfg: LaunchConfig):
    """ImageToProbe (and any other fixed transform) from ``source.calibration``, or None."""
    if not cfg.source.calibration:
        return None
    from ..io.plus_config import read_device_set

    return read_device_set(cfg.source.calibration).transform_repository()


def make_engine(variant: str, cfg: LaunchConfig, *, warmup: bool = True):
    """A :class:`CompletionEngine` for ``variant`` (``"multimodal"`` or ``"us_only"``)."""
    from ..completion.checkpoint import load_checkpoint, load_default
    from ..completion.engine import CompletionEngine

    c = cfg.completion
    path = c.weights if variant == "multimodal" else c.weights_us_only
    try:
        model, _, _ = load_checkpoint(path) if path else load_default(variant)
    except (FileNotFoundError, ValueError) as e:   # as the error head's: the launch key, then why
        key = "completion.weights" if variant == "multimodal" else "completion.weights_us_only"
        raise ConfigError(f"{key}: {e}") from None
    precision = None if c.precision == "auto" else c.precision
    return CompletionEngine(model, backend=c.backend, device=c.device, precision=precision, max_batch=5,
                            cache_dir=c.engine_cache or None, warmup=warmup,
                            error_head=_error_head(variant, cfg, model, packaged_weights=not path))


def _error_head(variant: str, cfg: LaunchConfig, model, *, packaged_weights: bool):
    """The error head of ``model`` when ``completion.uncertainty = "error_head"``: the launch file's, else the
    packaged one for the packaged weights; None (logged) for custom weights without one."""
    from ..completion.checkpoint import state_dict_hash
    from ..completion.error_head import load_error_head, packaged_error_head

    c = cfg.completion
    if c.uncertainty != "error_head":
        return None
    key = "completion.error_head" if variant == "multimodal" else "completion.error_head_us_only"
    path = c.error_head if variant == "multimodal" else c.error_head_us_only
    digest = state_dict_hash(model)
    if not path:
        if not packaged_weights:
            log.warning("%s weights are not the packaged ones and %s is empty: their surfaces carry no "
                        "uncertainty_mm (train a head: usx-stream error-head fit)", variant, key)
            return None
        try:   # the packaged pair always matches; an installation that replaced one file gets no uncertainty
            return load_error_head(packaged_error_head(variant), completion_hash=digest)[0]
        except (FileNotFoundError, ValueError) as e:
            log.warning("%s: no uncertainty_mm on %s surfaces: %s", key, variant, e)
            return None
    try:
        head, _ = load_error_head(path, completion_hash=digest)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{key}: {e}") from None
    return head


def make_engines(cfg: LaunchConfig) -> dict:
    """Both variants: the multimodal network and the US-only fallback used until an X-ray arrives."""
    if cfg.completion.threads:
        import torch

        # Process-wide: on a small CPU, threads beyond the free cores spin and slow everything down.
        torch.set_num_threads(cfg.completion.threads)
    return {"multimodal": make_engine("multimodal", cfg), "us_only": make_engine("us_only", cfg)}


CALIBRATE_HINT = ("make it with: usx-stream calibrate-xray --geometry calibration/carm_geometry.example.json "
                  "--pairs FIDUCIALS.csv --out {path}  (see calibration/README.md), or set xray.enabled = false")


def make_xray_cache(cfg: LaunchConfig):
    """An X-ray cache with the C-arm geometry of ``xray.geometry``; ``xray.source = "file"`` also loads
    the image and labelmap files. A disabled X-ray needs no geometry.

    Raises
    ------
    ConfigError
        The geometry or an X-ray file is missing or invalid: one line naming the file, the launch key and
        the command that makes the geometry.
    """
    from ..xray.cache import XrayCache

    x = cfg.xray
    if not x.enabled:
        return XrayCache()
    if x.source == "sim" and not x.geometry:
        # The X-ray (and labelmap, and C-arm) of the simulated session of source.seed: what `usx-stream demo`
        # streams; a node started from demo.toml with `usx-stream run` fuses the same X-ray.
        from ..sim.session import simulate_session

        session = simulate_session(int(cfg.source.seed), n_frames=cfg.source.n_frames)
        cache = XrayCache(geometry=session.xray.geometry)
        cache.update_from_xray_image(session.xray)
        return cache
    if not x.geometry:
        raise ConfigError("xray.geometry: required when the X-ray is enabled (xray.source = "
                          f"{x.source!r}); " + CALIBRATE_HINT.format(path="calibration/carm_geometry.json"))
    try:
        cache = XrayCache.from_calibration(x.geometry)
    except FileNotFoundError:
        raise ConfigError(f"xray.geometry: {x.geometry} does not exist; "
                          + CALIBRATE_HINT.format(path=x.geometry)) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"xray.geometry: {x.geometry} is not a usable C-arm geometry ({e}); "
                          + CALIBRATE_HINT.format(path=x.geometry)) from None
    if x.source == "file":
        from ..io.volumes import read_volume

        def plane(key, path):
            try:
                data = read_volume(path).data
            except FileNotFoundError:
                raise ConfigError(f"xray.{key}: {path} does not exist") from None
            except (OSError, ValueError) as e:
                raise ConfigError(f"xray.{key}: {path} cannot be read ({e})") from None
            return data[0] if data.ndim == 3 else data

        try:
            cache.update(pixels=plane("image_path", x.image_path),
                         labelmap=plane("labelmap_path", x.labelmap_path) if x.labelmap_path else None)
        except ValueError as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"xray.image_path / labelmap_path: {x.image_path}: rejected ({e})") from None
    return cache


def make_publishers(cfg: LaunchConfig) -> list:
    """OpenIGTLink POLYDATA (to Slicer) and ZeroMQ publishers of ``[publish]``, started."""
    p = cfg.publish
    out = []
    try:
        if p.igtl_enabled:
            from ..igtl.publisher import SurfacePublisher

            try:
                out.append(SurfacePublisher(role=p.igtl_mode, host=p.igtl_host, port=p.igtl_port,
                                            allow_clients=p.allow_clients or None, max_clients=p.max_clients,
                                            device_prefix=p.device_prefix).start())
            except OSError as e:  # the port taken (another node, a Slicer server), or an address not ours
                raise ConfigError(f"publish.igtl_port: cannot listen on {p.igtl_host}:{p.igtl_port}: "
                                  f"{e.strerror or e} (another node or OpenIGTLink server on it?)") from None
            log.info("publishing POLYDATA as OpenIGTLink %s on %s:%d", p.igtl_mode, p.igtl_host, out[-1].port)
        if p.zmq_enabled:
            import zmq

            from ..igtl.zmq_publisher import ZmqSurfacePublisher

            try:
                out.append(ZmqSurfacePublisher(p.zmq_endpoint))
            except zmq.ZMQError as e:
                raise ConfigError(f"publish.zmq_endpoint: cannot bind {p.zmq_endpoint}: {e}") from None
    except ConfigError:
        for publisher in out:  # what did start is stopped: the node does not run half-published
            publisher.close()
        raise
    return out


def simulated_parts(cfg: LaunchConfig, workdir: str | Path | None = None) -> dict:
    """``source.kind = "sim"``: simulate the session of ``source.seed``, write it under ``workdir`` (a
    temporary folder by default) and replay it at ``source.fps``; its X-ray fills the cache."""
    import tempfile

    from ..sim.session import simulate_session, write_session
    from ..sources.replay import SequenceReplay
    from ..xray.cache import XrayCache

    session = simulate_session(int(cfg.source.seed), n_frames=cfg.source.n_frames)
    files = write_session(session, workdir or tempfile.mkdtemp(prefix="usx-sim-"))
    xray = XrayCache(geometry=session.xray.geometry)
    if cfg.xray.enabled:
        xray.update_from_xray_image(session.xray)
    source = SequenceReplay(files["sequence"], rate=cfg.source.fps, loop=cfg.source.loop,
                            queue_size=cfg.source.queue_frames)
    return {"source": source, "xray": xray, "calibration": session.calibration}


def build_node(cfg: LaunchConfig, *, source=None, xray=None, engines=None, publishers=None, calibration=None):
    """A node from ``cfg``; any part given explicitly replaces the one the launch file describes."""
    from .compute import resolve_compute
    from .pipeline import Node

    cfg = resolve_compute(cfg)
    if cfg.source.kind == "sim" and source is None:
        parts = simulated_parts(cfg)
        source, calibration = parts["source"], calibration or parts["calibration"]
        xray = xray if xray is not None else parts["xray"]

    # Inputs a user makes (geometry, X-ray files, calibration) are checked first: a missing file fails at
    # once, before the engines load and before any socket opens.
    xray = xray if xray is not None else make_xray_cache(cfg)
    calibration = calibration if calibration is not None else make_calibration(cfg)
    return Node(cfg, source=source if source is not None else make_source(cfg),
                engines=engines if engines is not None else make_engines(cfg),
                xray=xray, publishers=publishers if publishers is not None else make_publishers(cfg),
                calibration=calibration)


def default_launch_dir() -> Path:
    """The repository's ``launch/`` folder (next to the package in a source checkout)."""
    return Path(__file__).resolve().parents[2] / "launch"
