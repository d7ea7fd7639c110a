"""Frame metadata of any content is written into a sequence header safely and reads back as it was."""

from __future__ import annotations

import numpy as np
import pytest

from usx_stream.frames import TrackedFrame
from usx_stream.io.header_escape import ENCODING_FIELD, escape_name, escape_value, unescape
from usx_stream.io.sequence import read_sequence, write_sequence, write_sequence_report

EVIL_KEY = "Evil\nElementDataFile = /etc/hostname\nX"
TRICKY = {
    EVIL_KEY: "1",
    "Note": "line1\nline2\r\nline3",
    "Wirbel": "L3 \u2192 \u4e2d\u6587 caf\u00e9",
    "Percent": "50% done, literal %41 and %zz",
    "Spaces": "  padded  ",
    "Key with spaces=and:colons": "v",
    "FooToBarTransform": "not a matrix",
    "Emoji\U0001f9b4": "\U0001f9b4",
}


def _frames(n=3, fields=None, transforms=None):
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        m = np.eye(4)
        m[:3, 3] = [i, 2.5, -1.0]
        out.append(TrackedFrame(pixels=rng.integers(0, 255, (6, 5), dtype=np.uint8), timestamp=10.0 + i / 30,
                                transforms=dict(transforms or {"ProbeToTracker": m}),
                                fields=dict(fields or {}), index=i))
    return out


def _header_lines(path) -> list[bytes]:
    """Header lines up to and including the first ElementDataFile, as a minimal MetaImage reader stops."""
    lines = []
    for line in path.read_bytes().split(b"\n"):
        lines.append(line)
        if line.startswith(b"ElementDataFile"):
            return lines
    raise AssertionError("no ElementDataFile line")


@pytest.mark.parametrize("text", ["", "plain", "a\nb", "%41", "%", "%%41", " x ", "\u4e2d", "\x00\x7f", "\U0001f9b4"])
def test_escape_round_trips(text):
    for escaped in (escape_name(text), escape_value(text)):
        assert all(" " <= c <= "~" for c in escaped) and "\n" not in escaped
        assert unescape(escaped) == text
    assert all(c.isalnum() or c in "_.-%" for c in escape_name(text))


@pytest.mark.parametrize("suffix", [".igs.mha", ".igs.nrrd"])
def test_tricky_fields_round_trip_and_cannot_inject_header_lines(tmp_path, suffix):
    frames = _frames(fields=TRICKY)
    report = write_sequence_report(tmp_path / f"t{suffix}", frames)
    assert report.fields_escaped == 3 * len(TRICKY) and report.fields_dropped == 0
    if suffix == ".igs.mha":
        lines = _header_lines(report.path)
        assert lines[-1] == b"ElementDataFile = LOCAL"        # the first one a reader meets is ours
        for line in lines:                                    # every line one ASCII 'name = value'
            name = line.decode("ascii").partition(" = ")[0]
            assert name and all(c.isalnum() or c in "_.-%" for c in name), line
    else:
        header = report.path.read_bytes().split(b"\n\n")[0].decode("ascii")
        assert not any(line.lower().startswith(("data file", "datafile")) for line in header.splitlines())
    back = read_sequence(report.path)
    assert back.header[ENCODING_FIELD] == "percent-utf8"
    for a, b in zip(frames, back.frames):
        assert b.fields == a.fields
        assert np.array_equal(b.transforms["ProbeToTracker"], a.transforms["ProbeToTracker"])
        assert np.array_equal(b.pixels, a.pixels)
    # the file rewritten from what was read is the same file
    again = read_sequence(write_sequence(tmp_path / f"again{suffix}", back))
    assert [f.fields for f in again.frames] == [f.fields for f in frames]


def test_safe_fields_are_written_verbatim_without_the_encoding_marker(tmp_path):
    frames = _frames(fields={"Note": "50% is fine here", "Depth_mm": "40"})
    path = write_sequence(tmp_path / "plain.igs.mha", frames)
    assert b"Seq_Frame0000_Note = 50% is fine here\n" in path.read_bytes()
    back = read_sequence(path)
    assert ENCODING_FIELD not in back.header
    assert back.frames[0].fields == frames[0].fields


def test_non_finite_transform_is_written_invalid_and_the_rest_survive(tmp_path):
    frames = _frames(n=4)
    frames[2].transforms["ProbeToTracker"][0, 3] = np.nan
    frames[3].transforms["StylusToTracker"] = np.full((4, 4), np.inf)
    report = write_sequence_report(tmp_path / "nan.igs.mha", frames)
    assert report.transforms_invalid == 2 and "ProbeToTracker" in report.notes[0]
    back = read_sequence(report.path)
    assert back.frames[2].transform_status["ProbeToTracker"] is False
    assert np.array_equal(back.frames[2].transforms["ProbeToTracker"], np.eye(4))
    assert back.frames[3].transform_status == {"ProbeToTracker": True, "StylusToTracker": False}
    assert np.array_equal(back.frames[1].transforms["ProbeToTracker"], frames[1].transforms["ProbeToTracker"])


def test_odd_transform_names_and_empty_field_names(tmp_path):
    m = np.eye(4)
    frames = _frames(transforms={"Pr\u00f6beToTracker": m, "Bad\nNameToX": m}, fields={"": "x", "Ok": "y"})
    report = write_sequence_report(tmp_path / "names.igs.mha", frames)
    assert report.fields_dropped == 3
    back = read_sequence(report.path)
    assert set(back.frames[0].transforms) == {"Pr\u00f6beToTracker", "Bad\nNameToX"}
    assert back.frames[0].fields == {"Ok": "y"}


def test_caller_header_outside_latin1_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Latin-1"):
        write_sequence(tmp_path / "h.igs.mha", _frames(n=1), header={"Note": "\u4e2d"})
