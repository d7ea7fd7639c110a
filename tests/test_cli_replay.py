"""``usx-stream replay`` as a user runs it: it waits for its first client, streams without waiting on
--no-wait, and exits 1 with one line when the stream fails after it started.

Real sockets on 127.0.0.1 (the replay picks a free port and prints it), no sleeps: the test waits on the
"serving" line and on the frames themselves; timeouts are safety nets only.
"""

from __future__ import annotations

import re
import subprocess
import threading

import pytest

from cli_files import FIRST_TIMESTAMP, N_FRAMES, cli_command, cli_env, run_cli, truncate, write_sequence_file
from usx_stream.igtl.receiver import ReceiverConfig
from usx_stream.sources.igtl_source import IgtlFrameSource

SAFETY_S = 60.0


@pytest.fixture
def replay(tmp_path):
    """Start ``usx-stream replay ARGS``; ``(process, port, serving line)`` once it serves; killed at the end."""
    procs = []

    def start(*args: str) -> tuple[subprocess.Popen, int, str]:
        proc = subprocess.Popen(cli_command("replay", *args, "--port", "0"), cwd=tmp_path, env=cli_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        watchdog = threading.Timer(SAFETY_S, proc.kill)  # readline below must not hang the suite
        watchdog.start()
        try:
            line = proc.stdout.readline()
        finally:
            watchdog.cancel()
        match = re.search(r" on 127\.0\.0\.1:(\d+) ", line)
        assert match, f"no 'serving' line: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        return proc, int(match.group(1)), line

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def _receive(port: int, n: int) -> list:
    frames = []
    with IgtlFrameSource("127.0.0.1", port, config=ReceiverConfig(image_device="Image_Image")) as source:
        while len(frames) < n:
            frame = source.get(timeout=SAFETY_S)
            if frame is None:
                break
            frames.append(frame)
    return frames


def test_replay_waits_for_its_first_client(tmp_path, replay):
    write_sequence_file(tmp_path / "scan.igs.mha")
    proc, port, serving = replay("scan.igs.mha", "--rate", "0")  # as fast as possible: without waiting, over now
    assert f"({N_FRAMES} frames" in serving and "waiting for 1 client before the first frame" in serving
    frames = _receive(port, N_FRAMES)
    out, err = proc.communicate(timeout=SAFETY_S)
    assert proc.returncode == 0, err
    assert [f.timestamp for f in frames] == pytest.approx([FIRST_TIMESTAMP + 0.04 * i for i in range(N_FRAMES)])
    assert frames[0].timestamp == FIRST_TIMESTAMP  # the client that connected after start-up got frame 0
    assert f"sent {N_FRAMES} frames" in out


def test_no_wait_streams_at_once(tmp_path):
    write_sequence_file(tmp_path / "scan.igs.mha")
    done = run_cli("replay", "scan.igs.mha", "--port", "0", "--rate", "0", "--no-wait", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "waiting" not in done.stdout and f"sent {N_FRAMES} frames" in done.stdout


def test_a_stream_that_fails_later_exits_1_with_one_line(tmp_path, replay):
    path = write_sequence_file(tmp_path / "scan.igs.mha")
    proc, port, _ = replay("scan.igs.mha", "--rate", "0")
    truncate(path)  # checked at start-up, damaged while the replay waits for its client
    frames = _receive(port, N_FRAMES - 1)
    out, err = proc.communicate(timeout=SAFETY_S)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("usx-stream replay: error: streaming stopped after ")
    assert "scan.igs.mha" in errors[0] and "Seq_Frame0004" in errors[0]
    assert len(frames) == N_FRAMES - 1 and f"sent {N_FRAMES - 1} frames" in out
