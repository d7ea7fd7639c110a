"""reconstruct a volume from a PLUS sequence (VolumeReconstructor drop-in)

Reads a PLUS sequence file (.igs.mha / .igs.nrrd; or a node recording folder, its chunks in order) and a
PlusDeviceSet XML (its CoordinateDefinitions give ImageToProbe, its VolumeReconstruction element the
settings), pastes every valid frame and writes the volume (.mha, .mhd or .nrrd, with origin and spacing).
Like PLUS's VolumeReconstructor: PLUS semantics by default (bit-for-bit PLUS volumes), ImageToReference
unless --image-to-reference-transform names another chain, the extent fitted to the frames unless the
configuration gives OutputOrigin/OutputExtent, hole filling when the configuration asks for it.

examples:
  usx-stream compound --config PlusDeviceSet_VolumeReconstructionOnly_SpinePhantom_NN_MEAN.xml \\
      --seq SpinePhantomFreehand.igs.mha --out volume.mha
  usx-stream compound --config DEVICESET.xml --seq scan.igs.mha --out volume.nrrd --mode exact
  usx-stream compound --config DEVICESET.xml --seq scan.igs.mha --out volume.mha \\
      --image-to-reference-transform ImageToTracker --extent-rounding truncate

exit status: 0 when the volume was written, 2 for bad input (nothing is written).
"""

from __future__ import annotations

import argparse
import logging
import time

from ._types import positive_int

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="PlusDeviceSet XML with a VolumeReconstruction element")
    parser.add_argument("--seq", required=True, help="PLUS sequence file (.igs.mha, .igs.nrrd) or a node recording "
                                                     "folder")
    parser.add_argument("--out", required=True, help="output volume (.mha, .mhd, .nrrd)")
    parser.add_argument("--mode", choices=("plus", "exact"), default="plus",
                        help="plus: PLUS's volumes bit for bit; exact: order-independent mean (default: %(default)s)")
    parser.add_argument("--image-to-reference-transform", default="ImageToReference", metavar="NAME",
                        help="transform that places the frames in the volume (default: %(default)s)")
    parser.add_argument("--extent-rounding", choices=("round", "truncate", "lattice"), default="round",
                        help="how the fitted extent is rounded: round (PLUS 2.x), truncate (older PLUS), "
                             "lattice (origin on a multiple of the spacing) (default: %(default)s)")
    parser.add_argument("--backend", choices=("numba", "numpy", "torch"), default="numba",
                        help="exact mode only: compute backend (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="exact mode, numba backend: threads pasting each frame (default: %(default)s)")
    parser.add_argument("--no-fill-holes", action="store_true", help="skip hole filling even if configured")
    parser.add_argument("--weights-out", default=None, metavar="PATH",
                        help="also write the accumulated weight per voxel (whole pixels, float32)")


def _read_inputs(args: argparse.Namespace):
    """``(ReconstructionConfig, calibration)`` after checking that the device set and the sequence go
    together; every problem is an InputError naming the file, the element or field, and the value."""
    from ..errors import InputError
    from ..io.plus_config import read_device_set
    from ..sources.replay import sequence_frames
    from ..transforms import split_name
    from ._inputs import require_transform

    try:
        image_frame, reference_frame = split_name(args.image_to_reference_transform)
    except ValueError as e:
        raise InputError(f"--image-to-reference-transform: {e}") from e
    device_set = read_device_set(args.config)  # the element's errors name the file, attribute and value
    if device_set.volume_reconstruction is None:
        raise InputError(f"{args.config}: no <VolumeReconstruction> element: compound takes its settings "
                         "(OutputSpacing, clipping, compounding, hole filling) from it")
    config = device_set.volume_reconstruction.replace(image_coordinate_frame=image_frame,
                                                      reference_coordinate_frame=reference_frame)
    calibration = device_set.transform_repository()
    frames = sequence_frames(args.seq)  # header and every frame's fields are checked here
    first = next(frames, None)
    frames.close()
    if first is None:
        raise InputError(f"{args.seq}: the sequence holds no frame")
    require_transform(first, calibration, args.image_to_reference_transform, config=args.config, sequence=args.seq)
    return config, calibration


def run(args: argparse.Namespace) -> int:
    from ..frames import Volume
    from ..io.volumes import write_volume
    from ..sources.replay import sequence_frames
    from ..compound.reconstructor import Reconstructor, output_geometry

    config, calibration = _read_inputs(args)
    # Two passes over the file, as PLUS does: the extent first, then the paste (one frame in memory).
    geometry = output_geometry(config, sequence_frames(args.seq), extent_rounding=args.extent_rounding,
                               calibration=calibration)
    backend = args.backend if args.mode == "exact" else "numba"
    recon = Reconstructor(config, geometry, semantics=args.mode, backend=backend, calibration=calibration,
                          threads=args.threads if args.mode == "exact" else 1)
    t0 = time.perf_counter()
    for frame in sequence_frames(args.seq):
        recon.add(frame)
    t_paste = time.perf_counter() - t0
    volume = recon.snapshot(fill_holes=False if args.no_fill_holes else None)
    t_total = time.perf_counter() - t0
    write_volume(args.out, volume)
    if args.weights_out:
        write_volume(args.weights_out, Volume(volume.weights, volume.origin_mm, volume.spacing_mm,
                                              frame=volume.frame))
    dims = " x ".join(str(d) for d in geometry.dims)
    print(f"{args.out}: {dims} voxels at {' '.join(f'{s:g}' for s in geometry.spacing_mm)} mm, origin "
          f"{' '.join(f'{o:.4f}' for o in geometry.origin_mm)} mm; {recon.frames_pasted} of {recon.frames_seen} "
          f"frames pasted ({recon.frames_rejected} invalid), {args.mode} semantics, "
          f"paste {t_paste:.2f} s, total {t_total:.2f} s", flush=True)
    return 0
