"""One well-formed but hostile message must not stop the node (each case once stopped it).

A PlusServer-like server written here streams a simulated session over a real socket, with one hostile
IMAGE after some valid frames (CRC correct; raw bytes where our encoder would refuse the content). The node
(automatic grid, as in or_live_plus.toml) must stay alive, compound every valid frame, count each bad one
under its reason and publish finite surfaces.
"""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest
import torch

from usx_stream.completion.engine import CompletionEngine
from usx_stream.completion.nets import ModelConfig, build_model
from usx_stream.node.launch import parse_launch
from usx_stream.frames import LEVELS
from usx_stream.igtl.codec import HEADER_SIZE, Message, encode_bytes
from usx_stream.igtl.codec_basic import StatusContent
from usx_stream.igtl.codec_image import ImageContent
from usx_stream.igtl.crc import crc64
from usx_stream.igtl.endpoints import Server
from usx_stream.igtl.receiver import ReceiverConfig
from usx_stream.node.pipeline import Node
from usx_stream.sim.session import simulate_session
from usx_stream.sources.igtl_source import IgtlFrameSource
from usx_stream.sources.replay_server import END_OF_STREAM_DEVICE, frame_messages
from usx_stream.xray.cache import XrayCache

MATRIX_AT = 12          # IMAGE content: version u16, 4 x u8, size 3 x u16, then the f32 matrix
SIZE_AT, SUB_SIZE_AT = 6, 66


@pytest.fixture(scope="module")
def session():
    return simulate_session(11, n_frames=90)


def _raw(msg: Message, patch) -> bytes:
    """``msg`` as version-1 bytes with ``patch(body: bytearray) -> bytearray`` applied and the CRC redone."""
    raw = bytearray(encode_bytes(Message(msg.type, msg.device_name, msg.content, msg.timestamp, {}, 1)))
    body = patch(bytearray(raw[HEADER_SIZE:]))
    head = raw[:HEADER_SIZE]
    head[HEADER_SIZE - 16:] = struct.pack(">QQ", len(body), crc64(bytes(body)))
    return bytes(head + body)


def _nan_rotation(body):
    struct.pack_into(">f", body, MATRIX_AT + 4, float("nan"))
    return body


def _zero_size(body):
    struct.pack_into(">3H", body, SIZE_AT, 0, 0, 0)
    struct.pack_into(">3H", body, SUB_SIZE_AT, 0, 0, 0)
    return body[:72]


def _huge_subvolume(body):  # 65535 x 65535 x 1 declared, a 1-voxel subvolume sent
    struct.pack_into(">3H", body, SIZE_AT, 65535, 65535, 1)
    struct.pack_into(">3H", body, SUB_SIZE_AT, 1, 1, 1)
    return body[:73]


def _bad_image(case: str, image: Message) -> Message | bytes:
    px, m = image.content.pixels, image.content.ijk_to_world
    t = image.timestamp + 1e-3

    def msg(content):
        return Message("IMAGE", image.device_name, content, t, {}, 2)

    if case == "nonfinite_pose":
        return _raw(msg(image.content), _nan_rotation)
    if case == "multi_component":
        return msg(ImageContent.from_2d(np.stack([px] * 3, axis=-1), m))
    if case == "empty_image":
        return _raw(msg(image.content), _zero_size)
    if case == "too_large":
        return _raw(msg(ImageContent.from_2d(px[:1, :1], m)), _huge_subvolume)
    if case == "pose_out_of_range":
        far = m.copy()
        far[:3, 3] = 1e30
        return msg(ImageContent.from_2d(px, far))
    if case == "not_rigid":
        singular = m.copy()
        singular[:3, :3] = 0.0
        return msg(ImageContent.from_2d(px, singular))
    if case == "unsupported_dtype":
        return msg(ImageContent.from_2d(px.astype(np.int32), m))
    if case == "nonfinite_pixels":
        return msg(ImageContent.from_2d(np.full(px.shape, np.nan, np.float32), m))
    if case == "not_2d":
        return msg(ImageContent(np.stack([px] * 4), m))
    raise AssertionError(case)


# reason -> how the node learns of it: at the edge (frames_rejected) or as an undecodable message
CASES = {"nonfinite_pose": "frames_rejected", "multi_component": "frames_rejected", "empty_image": "decode",
         "too_large": "decode", "pose_out_of_range": "frames_rejected", "not_rigid": "frames_rejected",
         "unsupported_dtype": "frames_rejected", "nonfinite_pixels": "frames_rejected",
         "not_2d": "frames_rejected"}


def _wait_for_v2_client(server: Server, timeout_s: float = 30.0) -> None:
    """Like PlusServer, the server talks version 2 (metadata) only once the client's hello has arrived."""
    assert server.wait_for_clients(1, timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while server.connections[0].peer_header_version < 2:
        assert time.monotonic() < deadline, "the client's version-2 hello never arrived"
        time.sleep(0.01)


def _engines():
    torch.manual_seed(0)
    return {v: CompletionEngine(build_model(ModelConfig.small(multimodal=v == "multimodal")), device="cpu",
                                warmup=False) for v in ("multimodal", "us_only")}


def test_hostile_frames_among_valid_ones_leave_the_node_compounding_and_publishing(session):
    cfg = parse_launch({"compound": {"spacing_mm": 1.0, "margin_mm": 10.0}, "completion": {"min_frames": 30},
                        "publish": {"igtl_enabled": False},
                        "bone": {"landmarks_mm": {lv: v.centroid_mm.tolist()
                                                  for lv, v in session.spine.vertebrae.items()}}})
    server = Server("127.0.0.1", 0).start()
    source = IgtlFrameSource("127.0.0.1", server.port, config=ReceiverConfig(), queue_size=1024)
    node = Node(cfg, source=source, engines=_engines(), xray=XrayCache())
    node.start()
    try:
        _wait_for_v2_client(server)
        bad_after = {3 + 3 * i: case for i, case in enumerate(CASES)}   # all among the first 30 frames
        for k, frame in enumerate(session.frames):
            msgs = frame_messages(frame, calibration=session.calibration)
            for m in msgs:
                assert server.broadcast(m, block_s=5.0) == 1
            if k in bad_after:
                bad = _bad_image(bad_after[k], msgs[0])
                if isinstance(bad, bytes):
                    assert server.connections[0].send_encoded([bad], block_s=5.0)
                else:
                    assert server.broadcast(bad, block_s=5.0) == 1
        server.broadcast(Message("STATUS", END_OF_STREAM_DEVICE, StatusContent(1, 0, "", "end"), None, {}, 2))
        assert node.wait_source_done(timeout=120)
        result = node.run_update()
    finally:
        node.stop()
        server.stop()
    assert node.error is None
    assert node.ingest.frames_pasted == len(session.frames)
    counters = node.telemetry.report()["counters"]
    for reason, where in CASES.items():
        if where == "frames_rejected":
            assert counters.get(f"frames_rejected:{reason}") == 1, (reason, counters)
    decode_rejected = source.stats()["transport"]["rejected"]
    assert decode_rejected.get("bad_content") == 2, decode_rejected
    assert set(result.surfaces) == set(LEVELS)
    assert all(np.isfinite(s.vertices_mm).all() for s in result.surfaces.values())


def test_a_message_the_receiver_cannot_place_is_skipped_and_the_source_goes_on(session):
    # A well-formed IMAGE whose Timestamp field is not a number once raised on the source thread and
    # ended the stream: it is counted (messages_rejected) and every valid frame still arrives.
    server = Server("127.0.0.1", 0).start()
    source = IgtlFrameSource("127.0.0.1", server.port, config=ReceiverConfig(), queue_size=1024).start()
    try:
        _wait_for_v2_client(server)
        frames = session.frames[:5]
        for k, frame in enumerate(frames):
            msgs = frame_messages(frame, calibration=session.calibration)
            for m in msgs:
                assert server.broadcast(m, block_s=5.0) == 1
            if k == 1:
                bad = msgs[0]
                server.broadcast(Message(bad.type, bad.device_name, bad.content, bad.timestamp + 1e-3,
                                         {**bad.metadata, "Timestamp": "not a time"}, 2), block_s=5.0)
        server.broadcast(Message("STATUS", END_OF_STREAM_DEVICE, StatusContent(1, 0, "", "end"), None, {}, 2))
        got = list(source)
    finally:
        source.stop()
        server.stop()
    assert [f.index for f in got] == list(range(len(frames)))
    assert source.stats()["messages_rejected"] == 1
