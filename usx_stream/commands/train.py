"""Train the completion network (multimodal or US-only) on paired HDF5 data.

Loss of DESIGN §4: CD_p on coarse_raw x10, coarse_high x0.5, coarse x1, fine x alpha (0.01 -> 0.1 -> 0.5 -> 1
at epochs 5/15/30) + 20 x (KL_rec + KL_gen); Adam, learning rate decayed x0.7 every 40 epochs. Keeps the
checkpoint with the lowest validation CD_t (best.pt) and the latest one (last.pt); --resume continues a run.
Options override the [train] table of --config.

Several processes (data-parallel, DDP): start the same options under torchrun; --batch-size is the global
batch (each of N processes takes batch/N, a multiple of N), the result equals one process with the same
batch, and only rank 0 writes files (NCCL on GPUs, each process on cuda:LOCAL_RANK; gloo on the CPU).

Examples:
  usx-stream train --data train.h5 --val val.h5 --variant multimodal --out runs/mm --epochs 100
  usx-stream train --config train.toml --max-minutes 20 --lr 5e-4
  usx-stream train --config train.toml --resume
  torchrun --nproc-per-node 4 -m usx_stream.train --config train.toml --device cuda --batch-size 32
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file with a [train] table")
    parser.add_argument("--data", help="training HDF5 (usx-stream dataset)")
    parser.add_argument("--val", help="validation HDF5 (best checkpoint by its CD_t), or several as a,b")
    parser.add_argument("--variant", choices=("multimodal", "us_only"), help="network variant (default multimodal)")
    parser.add_argument("--model", choices=("small", "paper"), help="ModelConfig preset (default small)")
    parser.add_argument("--out", help="output folder (checkpoints, train.log, history.json)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, dest="batch_size")
    parser.add_argument("--lr", type=float, help="Adam learning rate (paper: 1e-4)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--max-minutes", type=float, dest="max_minutes", help="wall-time budget (0 = none)")
    parser.add_argument("--val-every", type=int, dest="val_every", help="validate every N steps (0 = per epoch)")
    parser.add_argument("--val-samples", type=int, dest="val_samples", help="validate on the first N samples")
    parser.add_argument("--threads", type=int, help="torch threads (0 = default)")
    parser.add_argument("--gt-points", type=int, dest="gt_points",
                        help="ground-truth points per sample in the training loss (0 = all; fewer = faster)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--augment-rotate-deg", type=float, dest="augment_rotate_deg",
                        help="random rotation of each training sample up to this angle (default 0)")
    parser.add_argument("--augment-shift-mm", type=float, dest="augment_shift_mm",
                        help="random shift of each training sample up to this many mm per axis (default 0)")
    parser.add_argument("--augment-mirror", action="store_const", const=True, dest="augment_mirror",
                        help="mirror a random half of each batch left-right")
    parser.add_argument("--augment-scale", type=float, dest="augment_scale",
                        help="random per-axis scaling of each training sample by up to this fraction (default 0)")
    parser.add_argument("--augment-size", type=float, dest="augment_size",
                        help="random scaling of each training sample as a whole by up to this fraction (default 0)")
    parser.add_argument("--augment-width", type=float, dest="augment_width",
                        help="random scaling of each training sample's left-right extent by up to this fraction "
                             "(default 0)")
    parser.add_argument("--augment-warp-mm", type=float, dest="augment_warp_mm",
                        help="smooth random warp of each training sample, largest displacement in mm (default 0)")
    parser.add_argument("--body-weight", type=float, dest="body_weight",
                        help="weight of a body-only chamfer term of the fine output in the loss (default 0)")
    parser.add_argument("--init", help="start from these weights (checkpoint path, or 'default' for the shipped one)")
    parser.add_argument("--dtype", choices=("float32", "float64"),
                        help="float64: a slow reference run, reproducible to ~1e-9 (default float32)")
    parser.add_argument("--dist-backend", choices=("auto", "gloo", "nccl"), dest="dist_backend",
                        help="process-group backend under torchrun (default auto: nccl on CUDA, gloo on CPU)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt and OUT/state.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..train.config import load_train_config
    from ..train.loop import train

    keys = ("data", "val", "variant", "model", "out", "epochs", "batch_size", "lr", "seed", "max_minutes",
            "val_every", "val_samples", "threads", "gt_points", "device", "augment_rotate_deg", "augment_shift_mm",
            "augment_mirror", "augment_scale", "augment_size", "augment_width", "augment_warp_mm", "body_weight",
            "init", "dtype", "dist_backend")
    cfg = None
    try:
        cfg = load_train_config(args.config, **{k: getattr(args, k) for k in keys})
        result = train(cfg, resume=args.resume, progress=not args.no_progress)
    except ValueError as e:
        raise InputError(str(e)) from e
    except KeyboardInterrupt:  # Ctrl-C ends a long run: say where it stands, not a traceback
        out = cfg.out if cfg is not None else args.out
        print(f"usx-stream train: interrupted; {out}/last.pt and state.pt hold the last validation's state: "
              f"the same command with --resume continues from there", file=sys.stderr, flush=True)
        return 130
    if result.rank != 0:
        return 0
    print(f"{cfg.variant}: {result.step} steps, epoch {result.epoch}, {result.seconds / 60:.1f} min"
          f"{' (time budget reached)' if result.stopped_by_budget else ''}; best validation CD_t "
          f"{result.best_cd_t * 1e4:.3f} e-4 -> {result.best_path}")
    return 0
