"""Augmentation of training batches: small rotations, shifts, left-right mirroring and per-axis scaling.

At inference the node estimates each vertebra's canonical frame from the ultrasound bone points and the
X-ray, so the network meets inputs a few degrees and millimetres off the frame it was trained in, which the
dataset's exact frames never show it. The same rigid motion is applied to the partial cloud, the labelmap and
the ground truth of a sample, so the target stays consistent with the inputs. Mirroring x (left-right)
gives another plausible vertebra; it is a reflection, so it changes handedness, which the network must not
rely on anyway. Furthest-point orders are preserved by any isometry, so prefixes stay valid.

Scaling each axis by its own random factor (``scale``, e.g. ±8 %) makes a vertebra of other proportions, with
its X-ray labelmap scaled the same way: the network must then follow what the inputs show of the body's
height and depth instead of the proportions it has learned. On real anatomy it does not quite (a validation
spine's bodies came out 8 % too deep, with a silhouette that said otherwise). A few per cent of anisotropic
scaling keeps furthest-point prefixes well spread, if no longer exactly furthest-point.

Scaling all three axes by one factor (``size``) makes a bigger or smaller vertebra of the same proportions.
Sizes differ between adults by about 8 % (SD), more than the training subjects and the shape model's draws
do, so a network trained on those alone completes every body at the width it has seen, whatever the X-ray
silhouette's depth and height say of the patient's size. A uniform scale keeps furthest-point orders.

Stretching only the left-right axis (``width``) changes what the lateral X-ray cannot show: the labelmap is a
planar point set on the mid-sagittal plane, so only the ultrasound cloud (laminae, transverse processes)
carries a vertebra's width. Without it the network follows a lateral stretch of the ultrasound cloud by about a
quarter (validation: partial x 1.1 -> body width x 1.027) and completes wide bodies too narrow.

A smooth random warp (``warp``) makes shapes the training subjects do not have, where every transform above
only re-proportions the ones they have: each sample's points move by a few plane waves over the sagittal plane
(wavelengths 0.8-2 units, 40-100 mm at 50 mm per unit), in y and z, and its left-right extent changes by a
factor that varies the same way. Nothing of the warp depends on x except that stretch, which leaves the
mid-sagittal plane in place, so the lateral X-ray's labelmap of the warped vertebra is the warped labelmap.
"""

from __future__ import annotations

import math

import torch


def random_rotations(n: int, max_deg: float, generator: torch.Generator, device) -> torch.Tensor:
    """(n, 3, 3) rotations about uniformly random axes by angles uniform in [0, max_deg] degrees."""
    axis = torch.randn(n, 3, generator=generator)
    axis = axis / axis.norm(dim=1, keepdim=True).clamp_min(1e-12)
    angle = torch.rand(n, generator=generator) * math.radians(max_deg)
    k = torch.zeros(n, 3, 3)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k = k - k.transpose(1, 2)
    s, c = torch.sin(angle)[:, None, None], torch.cos(angle)[:, None, None]
    rot = torch.eye(3).expand(n, 3, 3) + s * k + (1 - c) * (k @ k)  # Rodrigues
    return rot.to(device)


WARP_WAVES = 2                   # plane waves per displacement component
WARP_FREQUENCY = (0.5, 1.25)     # cycles per unit of the model frame
WARP_WIDTH_RADIUS = 0.5          # units from the mid-sagittal plane where the width change moves a point by ``warp``


def random_warp(clouds: list[torch.Tensor | None], amplitude: float,
                generator: torch.Generator) -> list[torch.Tensor | None]:
    """Per sample, one smooth displacement of every cloud (see the module docstring): y and z move by at most
    ``amplitude`` (model units) each, x by at most ``amplitude`` at ``WARP_WIDTH_RADIUS`` from the mid-plane."""
    present = [c for c in clouds if c is not None]
    b, device, dtype = present[0].shape[0], present[0].device, present[0].dtype
    shape = (b, 3, WARP_WAVES)
    angle = torch.rand(shape, generator=generator) * (2 * math.pi)
    lo, hi = WARP_FREQUENCY
    freq = (lo + (hi - lo) * torch.rand(shape, generator=generator)) * (2 * math.pi)
    phase = torch.rand(shape, generator=generator) * (2 * math.pi)
    amp = (torch.rand(shape, generator=generator) * 2 - 1) * (amplitude / WARP_WAVES)
    amp[:, 0] /= WARP_WIDTH_RADIUS                                   # component 0: a relative change of x
    ky, kz = freq * torch.cos(angle), freq * torch.sin(angle)
    ky, kz, phase, amp = (t.to(device=device, dtype=dtype)[:, None] for t in (ky, kz, phase, amp))

    def warp(c: torch.Tensor) -> torch.Tensor:
        y, z = c[..., 1:2, None], c[..., 2:3, None]                  # (B, N, 1, 1) against (B, 1, 3, K)
        field = (amp * torch.sin(ky * y + kz * z + phase)).sum(-1)   # (B, N, 3)
        return torch.stack([c[..., 0] * (1 + field[..., 0]), c[..., 1] + field[..., 1], c[..., 2] + field[..., 2]],
                           dim=-1)

    return [None if c is None else warp(c) for c in clouds]


def augment_batch(clouds: list[torch.Tensor | None], *, rotate_deg: float, shift: float, mirror: bool,
                  generator: torch.Generator, scale: float = 0.0, size: float = 0.0,
                  width: float = 0.0, warp: float = 0.0) -> list[torch.Tensor | None]:
    """The same random motion (optional x mirror, per-axis scale, size, width) per sample applied to every cloud,
    after an optional smooth warp (``random_warp``).

    Parameters
    ----------
    clouds : list of (B, N_i, 3) tensors or None
        Partial, labelmap (None for US-only) and ground truth, in the model's unit frame.
    rotate_deg : float
        Largest rotation angle, degrees (0 = none).
    shift : float
        Largest translation per axis, model units (uniform in [-shift, shift]).
    mirror : bool
        Flip x for a random half of the samples.
    generator : torch.Generator
        CPU generator (reproducible runs whatever the device).
    scale : float
        Largest relative change of each axis' scale (factors uniform in [1 - scale, 1 + scale], drawn per axis
        and sample, applied about the unit frame's origin before the rotation); 0 = none.
    size : float
        Largest relative change of the sample's size (one factor uniform in [1 - size, 1 + size] for all
        three axes, about the unit frame's origin); 0 = none. Drawn after everything else, so a run without
        it draws what it drew before.
    width : float
        Largest relative change of the left-right (x) extent only (one factor uniform in [1 - width, 1 + width]
        per sample, about the unit frame's origin, before the rotation); 0 = none. Drawn after ``size``.
    warp : float
        Largest displacement of the smooth warp, model units, applied in the sample's own frame before
        everything else; 0 = none. Drawn after ``width``.
    """
    present = [c for c in clouds if c is not None]
    if not present or (rotate_deg <= 0 and shift <= 0 and not mirror and scale <= 0 and size <= 0
                       and width <= 0 and warp <= 0):
        return clouds
    b, device, dtype = present[0].shape[0], present[0].device, present[0].dtype
    m = torch.eye(3).expand(b, 3, 3).clone()
    if rotate_deg > 0:
        m = random_rotations(b, rotate_deg, generator, "cpu")
    if mirror:
        flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
        m = m * torch.stack([flip, torch.ones(b), torch.ones(b)], dim=1)[:, None, :]  # x' = -x, then rotate
    if scale > 0:
        m = m * (1 + (torch.rand(b, 1, 3, generator=generator) * 2 - 1) * scale)       # columns: scale, then rotate
    t = (torch.rand(b, 1, 3, generator=generator) * 2 - 1) * shift
    if size > 0:
        m = m * (1 + (torch.rand(b, 1, 1, generator=generator) * 2 - 1) * size)
    if width > 0:
        wx = 1 + (torch.rand(b, generator=generator) * 2 - 1) * width
        m = m * torch.stack([wx, torch.ones(b), torch.ones(b)], dim=1)[:, None, :]      # x column: before the rotation
    if warp > 0:
        clouds = random_warp(clouds, warp, generator)
    m, t = m.to(device=device, dtype=dtype), t.to(device=device, dtype=dtype)
    return [None if c is None else c @ m.transpose(1, 2) + t for c in clouds]
