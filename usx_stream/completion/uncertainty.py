"""Per-point completion uncertainty: how far the network's completion moves when its latent is drawn.

The network is a VAE: the completion the node publishes decodes the posterior *mean* of the latent
(``CompletionNet.forward``). Drawing K latents ``z_k = mu + std * eps_k`` from the same posterior and decoding
them in the same batch as the mean (:meth:`CompletionNet.mean_and_samples`, B x (1 + K) rows) gives K other
completions the network finds as plausible. The spread of point i of the mean completion ``m`` is the RMS,
over the K draws, of its distance to the corresponding point of draw k::

    spread_i = sqrt( (1 / K) * sum_k d_k(i)^2 )

where "corresponding" is

``"index"``    point i of draw k, ``d_k(i) = |s_k,i - m_i|``. Valid only when the architecture guarantees that
               point i of every draw comes from the same network slot (:attr:`CompletionNet.index_correspondence`:
               true for the shipped "ordered" configurations, where ``fine`` is the point-wise head's output
               for a fixed list of refinement inputs; false where furthest point sampling picks the output).
               It includes motion along the surface as well as across it.
``"nearest"``  the nearest point of draw k, ``d_k(i) = min_j |s_k,j - m_i|``: the distance from m_i to the
               draw's point set, across the surface only. It has a floor of about half the point spacing
               (~0.5-1 mm at 2048 points on a vertebra) even between draws of the same shape.
``"auto"``     "index" when the network guarantees it, else "nearest" (what the node uses).

The spread is measured about the published (mean) completion, not about the draws' own mean, so a point
that every draw moves the same way counts, and K = 1 already gives a value. It is 0 for a deterministic
model (all draws equal to the mean). Units follow the input (unit frame here; :mod:`completion.front` gives it
in mm with the scale of the vertebra's unit frame).

The draws are fixed per call from a seed (the same seed every update): a steady input gives a steady
colour on the surface, and a replayed session gives the same values.
"""

from __future__ import annotations

import torch

CORRESPONDENCES = ("auto", "index", "nearest")


def latent_draws(k: int, batch: int, latent: int, *, seed: int = 0) -> torch.Tensor:
    """(k, batch, latent) float32 standard normal draws on the CPU, the same for the same arguments."""
    if k < 1:
        raise ValueError(f"uncertainty: k must be >= 1, got {k}")
    return torch.randn((k, batch, latent), generator=torch.Generator().manual_seed(int(seed)))


def resolve_correspondence(correspondence: str, index_ok: bool) -> str:
    """``"auto"`` -> ``"index"`` when ``index_ok`` (the network's ``index_correspondence``), else ``"nearest"``;
    ``"index"`` on a network that does not guarantee it raises ValueError."""
    if correspondence not in CORRESPONDENCES:
        raise ValueError(f"uncertainty: correspondence must be one of {CORRESPONDENCES}, got {correspondence!r}")
    if correspondence == "auto":
        return "index" if index_ok else "nearest"
    if correspondence == "index" and not index_ok:
        raise ValueError("uncertainty: this network's output points do not correspond by index across draws "
                         "(furthest point sampling picks them); use 'nearest'")
    return correspondence


def point_spread(mean: torch.Tensor, samples: torch.Tensor, *, correspondence: str = "index") -> torch.Tensor:
    """RMS distance of each mean point to its corresponding point in every draw (see the module docstring).

    Parameters
    ----------
    mean : (B, N, 3) tensor
        The published completion (latent = posterior mean).
    samples : (B, K, M, 3) tensor
        K draws; M == N for ``"index"``.
    correspondence : {"index", "nearest"}

    Returns
    -------
    (B, N) float32 tensor, >= 0, in the unit of the inputs. K = 0 gives zeros.
    """
    if mean.dim() != 3 or samples.dim() != 4 or samples.shape[0] != mean.shape[0] or mean.shape[-1] != 3:
        raise ValueError(f"uncertainty: mean (B, N, 3) and samples (B, K, M, 3), got {tuple(mean.shape)} "
                         f"and {tuple(samples.shape)}")
    mean, samples = mean.float(), samples.float()
    b, k, n = samples.shape[0], samples.shape[1], mean.shape[1]
    if k == 0:
        return torch.zeros(b, n, device=mean.device)
    if correspondence == "index":
        if samples.shape[2] != n:
            raise ValueError(f"uncertainty: 'index' needs draws of {n} points, got {samples.shape[2]}")
        sq = (samples - mean.unsqueeze(1)).square().sum(-1)                  # (B, K, N)
    elif correspondence == "nearest":
        # one (N, M) distance matrix at a time: 16 MB at 2048 points, whatever B and K; exact differences (the
        # matrix-product form loses ~1e-3 to cancellation and would give equal draws a spread)
        sq = torch.stack([torch.stack([torch.cdist(mean[i], samples[i, j], compute_mode="donot_use_mm_for_euclid_dist")
                                       .amin(dim=1).square()
                                       for j in range(k)]) for i in range(b)])
    else:
        raise ValueError(f"uncertainty: correspondence must be 'index' or 'nearest', got {correspondence!r}")
    return sq.mean(dim=1).sqrt()
