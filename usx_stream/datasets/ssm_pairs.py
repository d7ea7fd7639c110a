"""Ray-cast training pairs from spines drawn out of a shape model of real spines (``dataset --ssm FILE N``).

The same sweep, X-ray and ground truth as the procedural pairs (:func:`.pairs.make_pairs`); only the
anatomy differs: each spine is a plausible draw of :func:`usx_stream.sim.spine_spec.ssm_spine`, so the
network sees the shapes and neighbour poses of real CT vertebrae, multiplied. The canonical frame of each
vertebra is exact (the shape model's own frame), not registered.
"""

from __future__ import annotations

import numpy as np

from ..frames import LEVELS
from .mesh_alignment import CanonicalVertebra
from .pairs import PairConfig, PairedSample, make_pairs


def ssm_spine_seed(seed: int, index: int) -> int:
    """The draw seed of spine ``index`` of the stream ``seed`` (disjoint streams per ``seed``)."""
    return int(np.random.SeedSequence([int(seed), int(index), 0x55]).generate_state(1)[0])


def ssm_vertebrae(model_path, draw_seed: int, *, spacing_mm: float = 1.0) -> list[CanonicalVertebra]:
    """The vertebrae of one drawn spine in Reference, each with its exact canonical frame."""
    from ..sim.spine_spec import placement, ssm_spine

    spine, draw = ssm_spine(model_path, draw_seed, spacing_mm=spacing_mm)
    to_reference = placement(spine)
    return [CanonicalVertebra(lv, spine.vertebrae[lv].mesh, spine.vertebrae[lv].body_mesh,
                              to_reference @ draw.to_spine[lv])
            for lv in LEVELS if lv in spine.vertebrae]


def ssm_pairs(index: int, *, seed: int, cfg: PairConfig, model_path: str) -> tuple[list[PairedSample], list[str]]:
    """Samples of drawn spine number ``index`` of the stream ``seed`` (deterministic)."""
    draw_seed = ssm_spine_seed(seed, index)
    vertebrae = ssm_vertebrae(model_path, draw_seed, spacing_mm=cfg.mesh_spacing_mm)
    rng = np.random.default_rng([int(seed), int(index)])
    return make_pairs(vertebrae, cfg=cfg, rng=rng, name=f"ssm{index:05d}")
