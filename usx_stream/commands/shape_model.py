"""build or sample the statistical shape model of the lumbar spine (L1-L5) learnt from real CT surfaces, or
segment the lumbar vertebrae of a CT to add one more subject

build: registers every real vertebra under --data to a template of its level (rigid, then Coherent Point
Drift and a normal-aware polish), learns a PCA model per level and the neighbour poses from the spines in
place, holds out whole subjects (--held-out, default Verse631) and reports their reconstruction error.
--labelmap adds a subject from outside --data: a TotalSegmentator v2 label map of one more CT.

sample: draws a spine within --sd standard deviations, rejects and redraws implausible ones (self
intersection, neighbour collision, body dimensions, Mahalanobis distance) and writes OUT/L1.ply .. L5.ply
(LPS axes: x left, y posterior, z cranial, mm, origin at the L3 centroid), the input of
`usx-stream simulate --spine OUT`.

segment-ct: labels L1-L5 of a CT (Hounsfield units; NIfTI, or with the ct extra NRRD, MetaImage or a folder
holding one DICOM series) from a body-centre seed per level (T12, L1..L5, S1; voxel indices i,j,k in the
file's order, as 3D Slicer shows them) and an atlas (a TotalSegmentator v2 label map of another patient,
e.g. s0004): the atlas vertebrae are fitted to the CT's bone, then a watershed splits the bone between them
(usx_stream.shape.ct_segment). Writes a TotalSegmentator v2 label map, usable as --labelmap here and as
--spine of simulate and dataset. Check the --png picture before using a result; --omit drops a level that
came out wrong.

examples:
  usx-stream shape-model build --out ssm.npz
  usx-stream shape-model build --out ssm.npz --labelmap s0012=combined_label_map.nii.gz
  usx-stream shape-model build --out ssm.npz --size-sd 0.07      # draws spread in size like adults
  usx-stream shape-model sample --model ssm.npz --seed 3 --out spine3 --png spine3.png
  usx-stream shape-model segment-ct --ct ct.nii.gz --atlas s0004_labels.nii.gz --out s0028_labels.nii.gz \
      --seed T12=143,133,227 --seed L1=143,137,202 --seed L2=143,140,177 --seed L3=143,143,152 \
      --seed L4=143,138,131 --seed L5=143,135,109 --seed S1=143,125,88 --png s0028.png
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ._actions import add_actions
from ._types import in_range, positive_float

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    b, s, g = add_actions(parser, {"build": "build ssm.npz from the real vertebrae",
                                   "sample": "write a plausible sampled spine as L1..L5.ply",
                                   "segment-ct": "label L1..L5 of a CT from a seed per level and an atlas"})
    b.add_argument("--data", default="../shared/data/vertebrae", help="reference vertebrae folder (default: %(default)s)")
    b.add_argument("--labelmap", action="append", default=[], metavar="[SUBJECT=]FILE",
                   help="another subject as a TotalSegmentator v2 label map (NIfTI), a spine in place; repeatable; "
                        "SUBJECT defaults to the file name without _labels.nii.gz")
    b.add_argument("--out", required=True, help="output .npz")
    b.add_argument("--held-out", default="Verse631", help="comma-separated subjects kept out (default: %(default)s)")
    b.add_argument("--seed", type=int, default=0, help="sampling seed of the build (default: %(default)s)")
    b.add_argument("--variance", type=in_range(float, 0, 1, low_open=True), default=0.95,
                   help="fraction of variance kept (default: %(default)s)")
    b.add_argument("--size-sd", type=in_range(float, 0, 0.25, high_open=True), default=0.0, dest="size_sd",
                   help="draw each sampled spine with a whole-spine size factor of this SD (0.07: the adult spread, "
                        "usx_stream.shape.ssm.SIZE_SD_ADULT; default: %(default)s, size only as the subjects vary)")
    s.add_argument("--model", required=True, help="ssm.npz from build")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--sd", type=positive_float, default=None,
                   help="Mahalanobis limit of each draw (default: usx_stream.sim.spine_spec.SSM_SAMPLE_SD, 0.5)")
    s.add_argument("--png", help="also write a picture of this spine and three more (side and top views)")
    g.add_argument("--ct", required=True,
                   help="CT volume in Hounsfield units: NIfTI (.nii/.nii.gz); NRRD, MetaImage (.mha/.mhd) or a "
                        "folder holding one DICOM series with SimpleITK (pip install 'usx-stream[ct]')")
    g.add_argument("--atlas", required=True,
                   help="TotalSegmentator v2 label map of another patient holding T12, L1..L5 and the sacrum "
                        "(read like --ct)")
    g.add_argument("--seed", action="append", default=[], metavar="LEVEL=I,J,K", dest="seeds",
                   help="a voxel inside the vertebral body of LEVEL (T12, L1..L5, S1); all seven are required")
    g.add_argument("--omit", default="", help="comma-separated lumbar levels left out of the output (wrong ones)")
    g.add_argument("--out", required=True, help="output label map (.nii.gz)")
    g.add_argument("--png", help="also write a picture to check the result by eye")


def run(args: argparse.Namespace) -> int:
    return {"build": _build, "sample": _sample, "segment-ct": _segment_ct}[args.action](args)


def _build(args) -> int:
    import numpy as np

    from ..errors import InputError
    from ..shape.ssm import build_model, save_model

    data = Path(args.data)
    if not data.is_dir():
        raise InputError(f"--data: no such folder: {data}")
    held = tuple(x for x in args.held_out.split(",") if x)
    try:
        model = build_model(data, held_out=held, variance_kept=args.variance, seed=args.seed,
                            labelmaps=labelmap_subjects(args.labelmap), size_sd=args.size_sd)
    except (ValueError, FileNotFoundError) as e:  # names the option or the level and the folder
        raise InputError(str(e).replace("labelmaps: ", "--labelmap: ", 1)) from e
    save_model(model, args.out)
    for lv, m in model.levels.items():
        e = m.extra
        print(f"{lv}: {len(e['instances'])} shapes, {len(m.variances)} modes, residual "
              f"{e['residual_mm'].mean():.2f} mm (max {e['residual_mm'].max():.2f})")
        for name, r, err, err0 in zip(e["heldout_instances"], e["heldout_residual_mm"], e["heldout_error_mm"],
                                      e["heldout_mean_error_mm"]):
            print(f"  held out {name}: reconstruction {err:.2f} mm (mean shape {err0:.2f} mm, registration {r:.2f} mm)")
    for (a, b), (mean, _, n) in model.poses.items():
        print(f"pose {a}->{b}: {n} spines, translation {np.round(mean[:3], 1).tolist()} mm")
    print(f"wrote {args.out}")
    return 0


def labelmap_subjects(specs: list[str]) -> dict[str, Path]:
    """``--labelmap [SUBJECT=]FILE`` values as subject -> file; a subject given twice is an error."""
    from ..shape.sources import labelmap_subject

    out: dict[str, Path] = {}
    for spec in specs:
        subject, sep, file = spec.partition("=")
        path = Path(file if sep else spec)
        if not sep:
            subject = labelmap_subject(path)
        if not subject:
            raise ValueError(f"--labelmap: empty subject in {spec!r}")
        if subject in out:
            raise ValueError(f"--labelmap: subject {subject!r} given twice ({out[subject]}, {path})")
        out[subject] = path
    return out


def _sample(args) -> int:
    import numpy as np

    from ..sim.spine_spec import SSM_SAMPLE_SD

    if args.sd is None:
        args.sd = SSM_SAMPLE_SD

    from ..shape.sample import preview_png, sample_checked, write_spine
    from ..shape.ssm import load_model

    model = load_model(args.model)
    try:
        draw, check, tries = sample_checked(model, np.random.default_rng(args.seed), sd=args.sd)
    except RuntimeError as e:  # every draw implausible: the limit, not a bug, is what to change
        from ..errors import InputError

        raise InputError(f"--sd {args.sd:g}: {e}; draws that far from the mean are rarely plausible (at 0.8 "
                         f"none of 6 were, at 0.5 all; default {SSM_SAMPLE_SD:g})") from None
    paths = write_spine(draw.spine, args.out)
    print(f"wrote {len(paths)} meshes to {args.out} after {tries} draw(s), size x{draw.size:.3f}")
    for lv, m in check.measures.items():
        print(f"  {lv}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()))
    if args.png:
        # three more spines from independent streams of the same seed (SeedSequence.spawn)
        more = [sample_checked(model, np.random.default_rng(ss), sd=args.sd)[0].spine
                for ss in np.random.SeedSequence(args.seed).spawn(3)]
        preview_png([draw.spine] + more, args.png)
        print(f"wrote {args.png}")
    return 0


def parse_seeds(specs: list[str]) -> dict[str, tuple[float, float, float]]:
    """``--seed LEVEL=I,J,K`` values as level -> voxel indices; a bad or repeated one names itself."""
    from ..errors import InputError

    out: dict[str, tuple[float, float, float]] = {}
    for level, ijk in map(_seed, specs):
        if level in out:
            raise InputError(f"--seed: {level} given twice")
        out[level] = ijk
    return out


def _seed(spec: str) -> tuple[str, tuple[float, float, float]]:
    from ..errors import InputError
    from ..shape.ct_segment import SEED_LEVELS

    level, _, text = spec.partition("=")
    if level not in SEED_LEVELS:
        raise InputError(f"--seed {spec!r}: level must be one of {', '.join(SEED_LEVELS)}")
    try:
        ijk = tuple(float(v) for v in text.split(","))
    except ValueError:
        ijk = ()
    if len(ijk) != 3:
        raise InputError(f"--seed {spec!r}: expected LEVEL=I,J,K (three voxel indices)")
    return level, ijk


def _segment_ct(args) -> int:
    import numpy as np

    from ..errors import InputError
    from ..io.ct_image import read_ct_image
    from ..io.nifti_write import write_nifti_labels
    from ..shape.ct_segment import BONE_HU, LUMBAR, TOTALSEGMENTATOR_CODES, segment_lumbar
    from ..sim.ct_labelmaps import refuse_an_image

    omit = [lv for lv in args.omit.split(",") if lv]
    bad = [lv for lv in omit if lv not in LUMBAR]
    if bad:
        raise InputError(f"--omit: {', '.join(bad)} is not a lumbar level (L1..L5)")
    seeds = parse_seeds(args.seeds)
    ct, ijk_to_lps = read_ct_image(args.ct, what="--ct")
    if not ct.size or ct.max() <= BONE_HU:
        raise InputError(f"--ct {args.ct}: no voxel above the bone threshold of {BONE_HU:g} HU (maximum "
                         f"{ct.max() if ct.size else float('nan'):g}): not a CT in Hounsfield units (a label map? "
                         f"--ct and --atlas swapped?)")
    atlas, atlas_ijk_to_lps = read_ct_image(args.atlas, what="--atlas")
    atlas = np.rint(atlas).astype(np.int64)
    refuse_an_image(atlas, f"--atlas {args.atlas}")
    atlas = atlas.astype(np.int16)
    seg = segment_lumbar(ct, ijk_to_lps, seeds, atlas, atlas_ijk_to_lps)
    for lv, f in seg.fits.items():
        kept = "" if lv not in LUMBAR else ("  omitted" if lv in omit else f", {f.volume_cm3:.1f} cm3")
        print(f"{lv}: seed {[round(float(v), 1) for v in f.seed_ijk]}, atlas scale {f.scale:.3f}, "
              f"fit residual {f.residual_mm:.2f} mm, axis tilt {f.tilt_deg:.1f} deg{kept}")
    for lv in omit:
        seg.labels[seg.labels == TOTALSEGMENTATOR_CODES[lv][0]] = 0
    write_nifti_labels(args.out, seg.labels, seg.ijk_to_lps)
    print(f"wrote {args.out}")
    if args.png:
        from ..shape.ct_segment_preview import preview_png

        preview_png(ct, seg, args.png)
        print(f"wrote {args.png}")
    return 0
