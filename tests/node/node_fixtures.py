"""What several node tests build the same way: the compounding ROI of the simulated sessions and a pair of
small, untrained completion engines (the tests check the node's plumbing, not the network's accuracy)."""

from __future__ import annotations

import torch

from usx_stream.completion.engine import CompletionEngine
from usx_stream.completion.nets import ModelConfig, build_model

ROI = {"spacing_mm": 1.0, "origin_mm": [-70.0, 0.0, -120.0], "extent_mm": [140.0, 115.0, 240.0]}


def tiny_engines() -> dict[str, CompletionEngine]:
    """``{"multimodal": …, "us_only": …}``: seeded small networks on the CPU, no warm-up."""
    torch.manual_seed(0)
    return {variant: CompletionEngine(build_model(ModelConfig.small(multimodal=variant == "multimodal")),
                                      device="cpu", warmup=False)
            for variant in ("multimodal", "us_only")}
