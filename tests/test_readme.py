"""The README's "Use as a library" snippets run as written (from the repository root, with the reference
data beside it), so the documented library surface cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _snippets() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use as a library", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_library_section_has_its_two_snippets():
    snippets = _snippets()
    assert len(snippets) == 2
    assert "reconstruct(" in snippets[0] and "engine.complete(" in snippets[1]


def test_reconstruct_a_plus_recording_snippet(plus_data, monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)
    scope: dict = {}
    exec(compile(_snippets()[0], "README.md (reconstruct)", "exec"), scope)
    vol = scope["vol"]
    assert vol.data.ndim == 3 and vol.data.size > 1000 and np.count_nonzero(vol.data) > 1000
    np.testing.assert_allclose(vol.spacing_mm, 0.5)


def test_complete_a_vertebra_snippet(vertebrae_data, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    scope: dict = {}
    exec(compile(_snippets()[1], "README.md (complete)", "exec"), scope)
    completed, truth = scope["completed"], scope["truth"]
    assert completed.shape == (2048, 3) and np.isfinite(completed).all()
    # the completion lands on the vertebra it was given: its centre within a few mm of the truth's
    assert np.linalg.norm(completed.mean(axis=0) - truth.mean(axis=0)) < 10.0


def test_every_repository_path_the_documents_name_exists():
    """A file moved without its documentation (a README step pointing at a test or module that is gone)
    is caught here: every backticked path under the project's top-level folders must exist."""
    docs = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "usx_stream").rglob("*.md")),
            *sorted((REPO_ROOT / "benchmarks").glob("*.md")), *sorted((REPO_ROOT / "launch").glob("*.md"))]
    pattern = re.compile(r"`((?:usx_stream|benchmarks|calibration|launch|tests)/[\w./-]*\w)`")
    named = {(doc.relative_to(REPO_ROOT).as_posix(), path) for doc in docs
             for path in pattern.findall(doc.read_text(encoding="utf-8"))}
    assert len(named) >= 5
    missing = sorted(f"{doc}: {path}" for doc, path in named if not (REPO_ROOT / path).exists())
    assert not missing, missing
