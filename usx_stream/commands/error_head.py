"""fit or check the error head: the per-point completion uncertainty (expected distance to the true surface, mm)

fit: completes every pair of --data with the frozen completion weights (--model) as the node does (X-ray body
fit included), measures each point's distance to the ground truth, and trains the small per-point head of
usx_stream.completion.error_head on it (Laplace likelihood), keeping the epoch with the best Spearman rho on
--val, or with --average-from E the average of its weights over epochs E and after. The head is tied to those
weights (their state-dict hash) and written to --out.

check: on held-out pairs (--data), the rank correlation between the head's per-point uncertainty and the
per-point error, per-vertebra figures and the error by uncertainty decile, in mm. Use dense ground truth
(`usx-stream dataset ... --complete-points 16384`): with 2048 truth points the error has a ~0.5 mm floor.

examples:
  usx-stream error-head fit --model default --data tr_a.h5,tr_b.h5 --val val.h5 --out multimodal_error_head.pt
  usx-stream error-head check --model default --head default --data test.h5 --latent 8 --json check.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ._actions import add_actions
from ._types import non_negative, positive_int

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    f, c = add_actions(parser, {
        "fit": "train a head for frozen completion weights",
        "check": "rank correlation of the head's uncertainty with the error on held-out pairs"})
    for p in (f, c):
        p.add_argument("--model", default="default", help="'default', 'us-only' or a checkpoint (default: %(default)s)")
    f.add_argument("--data", required=True, help="training pairs, comma-separated HDF5 files")
    f.add_argument("--val", required=True, help="validation pairs (other subjects), comma-separated HDF5 files")
    f.add_argument("--out", required=True, help="output head file (.pt)")
    f.add_argument("--epochs", type=positive_int, default=30)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--average-from", type=non_negative(int), metavar="E",
                   help="keep the average of the weights after each epoch from E on, instead of the epoch with the "
                        "best validation rho (which scatters from epoch to epoch)")
    c.add_argument("--head", default="default", help="'default' (the head shipped with the default weights) or a "
                                                     "head file (default: %(default)s)")
    c.add_argument("--data", required=True, help="held-out pairs, comma-separated HDF5 files")
    c.add_argument("--latent", type=non_negative(int), default=0, metavar="K",
                   help="also report the spread of K latent draws (completion.uncertainty = latent) on the same points")
    c.add_argument("--json", help="also write the report here")


def run(args: argparse.Namespace) -> int:
    from ..completion.checkpoint import state_dict_hash
    from ..errors import InputError
    from ..completion.error_head import load_error_head, packaged_error_head, save_error_head
    from ..train.data import read_pairs_many
    from ..train.error_head import completion_errors, fit_error_head, predict, rank_report
    from ..train.evaluate import load_model

    net, cfg, name = load_model(args.model)
    digest = state_dict_hash(net)
    data = completion_errors(net, read_pairs_many(args.data))
    if args.action == "fit":
        val = completion_errors(net, read_pairs_many(args.val))
        head, history = fit_error_head(data, val, multimodal=cfg.multimodal, epochs=args.epochs, seed=args.seed,
                                       average_from=args.average_from)
        report = rank_report(predict(head, val) * val.mm_per_unit, val.error * val.mm_per_unit)
        extra = {"command": args.command_line, "model": name, "data": args.data,
                 "val": args.val, "train_vertebrae": len(data.error), "val_vertebrae": len(val.error),
                 "val_spearman_rho": report["spearman_rho"], "history": history}
        save_error_head(args.out, head, digest, extra)
        print(f"{name}: head trained on {len(data.error)} vertebrae, validation rho {report['spearman_rho']:.3f} "
              f"({len(val.error)} vertebrae) -> {args.out}")
        return 0
    path = packaged_error_head("multimodal" if cfg.multimodal else "us_only") if args.head == "default" else Path(args.head)
    try:
        head, _ = load_error_head(path, completion_hash=digest)
    except ValueError as e:
        raise InputError(f"--head: {e}") from None
    report = rank_report(predict(head, data) * data.mm_per_unit, data.error * data.mm_per_unit, data.levels)
    report.update({"model": name, "head": str(path), "data": args.data})
    _print(report)
    if args.latent:
        from ..train.error_head import latent_spread

        spread = latent_spread(net, read_pairs_many(args.data), k=args.latent)
        latent = rank_report(spread * data.mm_per_unit, data.error * data.mm_per_unit, data.levels)
        latent.update({"model": name, "head": f"latent spread, K = {args.latent}", "data": args.data})
        _print(latent)
        report["latent"] = latent
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def _print(r: dict) -> None:
    print(f"{r['model']}, head {Path(r['head']).name}: {r['vertebrae']} vertebrae, {r['points']} points")
    print(f"  Spearman rho (all points) {r['spearman_rho']:.3f}, p = {r['p_value']:.1e}; per vertebra: median "
          f"{r['per_vertebra_rho_median']:.3f}, positive in {100 * r['per_vertebra_rho_positive']:.0f} %; "
          f"per-vertebra means {r['vertebra_mean_rho']:.3f} (p = {r['vertebra_mean_p']:.2g})")
    print(f"  mean uncertainty {r['uncertainty_mean']:.2f} mm, mean error {r['error_mean']:.2f} mm")
    print("  decile  uncertainty mm   error mean / median mm")
    for d in r["deciles"]:
        lo, hi = d["uncertainty"]
        print(f"  {d['decile']:6d}  {lo:5.2f}-{hi:5.2f}      {d['error_mean']:.2f} / {d['error_median']:.2f}")
    for lv, x in r.get("per_level", {}).items():
        print(f"  {lv}: rho {x['spearman_rho']:.3f}, uncertainty {x['uncertainty_mean']:.2f} mm, "
              f"error {x['error_mean']:.2f} mm")
