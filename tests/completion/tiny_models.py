"""Tiny completion-network configurations and inputs: the 2-core CI machine runs them in milliseconds.

A module of its own (not conftest) so that test files import it by a name no other test folder uses:
``from conftest import ...`` picks whichever conftest was imported first when several folders run together.
"""

from __future__ import annotations

import numpy as np
import torch

from usx_stream.completion.nets import ModelConfig

TINY = dict(num_partial=64, num_labelmap=32, num_coarse_raw=32, refine_partial=32, refine_labelmap=16,
            num_out=128, up_ratio=2, latent=8, feature_size=32, pcn_widths=(16, 16, 32), renet_channels=32,
            renet_global=32, renet_fc_hidden=16, dense_feature=16, expand_feature=16, knn=(8,), pool_k=4,
            pool_points=(40, 20, 10))


def tiny_config(**changes) -> ModelConfig:
    values = dict(TINY)
    values.update(changes)
    if not values.get("multimodal", True):
        values.update(num_labelmap=0, refine_labelmap=0)
    return ModelConfig(**values)


def tiny_inputs(cfg: ModelConfig, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    rng = np.random.default_rng(seed)
    partial = torch.from_numpy(rng.uniform(-1, 1, (batch, cfg.num_partial, 3)).astype(np.float32))
    if not cfg.multimodal:
        return partial, None
    labelmap = torch.from_numpy(rng.uniform(-1, 1, (batch, cfg.num_labelmap, 3)).astype(np.float32))
    return partial, labelmap
