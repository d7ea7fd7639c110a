"""The one status line the node shows on the navigation display after each update: what was completed, and
why any level was not (no X-ray, an X-ray refused, too few bone points, centres that cannot be a spine)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..frames import LEVELS

if TYPE_CHECKING:
    from .update import UpdateInputs


def _level_span(levels: list[str]) -> str:
    """``["L1", "L2", "L3"]`` -> ``"L1–L3"``; non-consecutive levels are listed (``"L1, L3"``)."""
    idx = sorted(LEVELS.index(lv) for lv in levels)
    if len(idx) > 1 and idx == list(range(idx[0], idx[-1] + 1)):
        return f"{LEVELS[idx[0]]}\u2013{LEVELS[idx[-1]]}"
    return ", ".join(LEVELS[i] for i in idx)


def node_status(inputs: UpdateInputs, *, xray_rejected: str | None = None) -> str:
    """One line for the navigation display: what was completed and why any level was not.

    ``xray_rejected``: why the last X-ray was refused, when no valid one is there (the display then says so
    instead of "no X-ray"). Examples: ``"L1–L5 multimodal"``,
    ``"L2–L4 us_only (no X-ray); L5: too few bone points (12 < 50)"``, ``"waiting for X-ray or level landmarks"``.
    """
    unlabelled = "the X-ray labelmap has no vertebra label 1..5"
    no_xray = f"X-ray rejected: {xray_rejected}" if xray_rejected else "no X-ray"
    if inputs.centres_source == "none":
        if inputs.xray_unlabelled:
            return f"{unlabelled}: waiting for level landmarks"
        if xray_rejected and inputs.xray_expected:
            return f"{no_xray}; waiting for a valid X-ray or level landmarks"
        return "waiting for X-ray or level landmarks" if inputs.xray_expected else "waiting for level landmarks"
    if inputs.blocked:
        return inputs.blocked
    done = [c.level for c in inputs.levels]
    parts = []
    if done:
        why = ""
        if inputs.fusion == "us_only" and inputs.xray_expected:
            why = f" ({unlabelled if inputs.xray_unlabelled else no_xray})"
        parts.append(f"{_level_span(done)} {inputs.fusion}{why}")
    for lv in LEVELS:
        n = len(inputs.per_level.get(lv, ()))
        if lv in inputs.per_level and lv not in done:
            parts.append(f"{lv}: too few bone points ({n} < {inputs.min_points})")
    if inputs.axis_note and parts:
        parts.append(inputs.axis_note)
    if not parts:
        return f"waiting for bone points near the level centres ({inputs.centres_source})"
    return "; ".join(parts)
