"""A broken sequence file is caught before it is served, and a stream that breaks later is reported
through ReplayServer.error rather than lost in its thread."""

from __future__ import annotations

import logging

import pytest

from cli_files import FIRST_TIMESTAMP, N_FRAMES, truncate, write_sequence_file
from usx_stream.errors import InputError
from usx_stream.sources import replay_server
from usx_stream.sources.replay import SequenceReplay, check_sequence
from usx_stream.sources.replay_server import ReplayServer


def test_check_sequence_reads_every_frame(tmp_path):
    check = check_sequence(write_sequence_file(tmp_path / "s.igs.mha", compress=True))
    assert check.frames == N_FRAMES and check.first.timestamp == FIRST_TIMESTAMP
    assert check.duration_s == pytest.approx(0.04 * (N_FRAMES - 1))


@pytest.mark.parametrize("compress", [False, True])
def test_check_sequence_names_the_incomplete_frame(tmp_path, compress):
    path = truncate(write_sequence_file(tmp_path / "s.igs.mha", compress=compress))
    with pytest.raises(InputError, match=r"s\.igs\.mha: pixel data ends .*Seq_Frame\d{4} of 5 frames is incomplete"):
        check_sequence(path)


def test_missing_or_directory_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="nope.igs.mha: sequence file not found"):
        check_sequence(tmp_path / "nope.igs.mha")
    with pytest.raises(InputError, match="a folder without recorded chunks"):
        ReplayServer(tmp_path, port=0)
    with pytest.raises(InputError, match="not found"):
        SequenceReplay(tmp_path / "nope.igs.mha")


def test_stream_that_breaks_sets_error_and_done(tmp_path):
    path = truncate(write_sequence_file(tmp_path / "s.igs.mha"))
    with ReplayServer(path, port=0, rate=0) as server:
        assert server.done.wait(30)
    assert isinstance(server.error, InputError) and "Seq_Frame0004" in str(server.error)
    assert server.frames_sent == N_FRAMES - 1


def test_a_bug_in_the_stream_is_logged_with_its_traceback(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("bug in frame_messages")

    monkeypatch.setattr(replay_server, "frame_messages", broken)
    with caplog.at_level(logging.ERROR, logger=replay_server.__name__):
        with ReplayServer(write_sequence_file(tmp_path / "s.igs.mha"), port=0, rate=0) as server:
            assert server.done.wait(30)
    assert isinstance(server.error, RuntimeError) and server.frames_sent == 0
    assert any(r.exc_info and r.exc_info[0] is RuntimeError for r in caplog.records)
