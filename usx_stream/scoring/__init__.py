"""Scoring a node recording against a truth (a CT's label volume or per-level meshes), with registration.

- :mod:`.recording`  the last published surface per level, the recorded frames, the beam direction;
- :mod:`.truth`      truth meshes from a folder or a label volume (VerSe / TotalSegmentator), the body rule;
- :mod:`.register`   truth-to-Reference: none, paired fiducials, or automatic from recompounded bone points;
- :mod:`.report`     per-level metrics in mm (whole, body, arch) and a picture;
- :mod:`.score`      the one entry point, :func:`~usx_stream.scoring.score.score_recording`.

Everything is scored in Reference, mm.
"""
