"""Evaluate completion models on a paired HDF5 file and compare two of them.

Every metric of DESIGN §3 (CD_p, CD_t x1e4, F1 at 0.01 in the unit frame; ASSD, HD95, F-score at 1 and 2 mm),
whole vertebra / body / arch (split at the ground-truth centroid along the posterior axis), overall and per
level L1..L5. With --compare, a Wilcoxon signed-rank test per metric between the two models on the same
vertebrae (two-sided, and one-sided "--model is better"). --report writes a PNG with per-level box plots
and example completions.

Examples:
  usx-stream eval --data test.h5 --model default --compare us-only --json eval.json --report eval.png
  usx-stream eval --data verse.h5 --model runs/mm/best.pt --json verse.json
  usx-stream eval --data node_test.h5 --model default --compare default --fit-body --json fit.json
  usx-stream eval --data node_test.h5 --model new.pt --compare default --fit-body --fit-compare --json pair.json
"""

from __future__ import annotations

import argparse
import json
import math

from ._types import non_negative


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True,
                        help="paired HDF5 file (usx-stream dataset), or several as a,b,c (evaluated as one set)")
    parser.add_argument("--model", default="default", help="checkpoint path, or 'default' (shipped multimodal)")
    parser.add_argument("--compare", help="second model: checkpoint path or 'us-only' (shipped US-only)")
    parser.add_argument("--json", required=True, dest="json_out", help="output JSON with every number")
    parser.add_argument("--report", help="output PNG report")
    parser.add_argument("--fit-body", action="store_true",
                        help="fit --model's completions' bodies to the X-ray silhouette, as the node does (multimodal "
                             "only; --compare is left as it is, so '--compare' the same model measures the fit)")
    parser.add_argument("--fit-compare", action="store_true",
                        help="fit --compare's bodies too (a multimodal one): two models compared as the node runs them")
    parser.add_argument("--width-response", action="store_true",
                        help="also measure how far each model's completed body width follows a left-right stretch "
                             "of the ultrasound cloud by x0.9/1.1/1.2 (usx_stream.train.width_response; no body fit)")
    parser.add_argument("--limit", type=non_negative(int), default=0,
                        help="evaluate the first N samples only (0 = all)")
    parser.add_argument("--threads", type=non_negative(int), default=0, help="torch threads (0 = default)")


def _line(summary: dict, region: str) -> str:
    s = summary["overall"][region]
    return (f"CD_t {s['cd_t_x1e4']['mean']:.2f}e-4  CD_p {s['cd_p']['mean']:.4f}  F1 {s['f1']['mean']:.3f}  "
            f"ASSD {s['assd_mm']['mean']:.2f} mm  HD95 {s['hd95_mm']['mean']:.2f} mm  "
            f"F@1mm {s['fscore_1mm']['mean']:.3f}  F@2mm {s['fscore_2mm']['mean']:.3f}")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import InputError
    from ..train.data import read_pairs_many
    from ..train.evaluate import evaluate_model, load_model, summarise, wilcoxon_compare
    from ..train.width_response import model_width_response

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fit_compare and not args.compare:
        raise InputError("--fit-compare needs --compare")
    try:
        arrays = read_pairs_many(args.data)
        if args.limit:
            arrays = _head(arrays, args.limit)
        specs = [args.model] + ([args.compare] if args.compare else [])
        evals, widths = [], []
        for k, spec in enumerate(specs):
            net, cfg, name = load_model(spec)
            fit = args.fit_body if k == 0 else args.fit_compare
            evals.append(evaluate_model(net, cfg, arrays, name=name, fit_body=fit))
            if args.width_response:
                widths.append(model_width_response(net, cfg, arrays, name=name))
    except (ValueError, FileNotFoundError) as e:
        raise InputError(str(e)) from e
    result = {"data": args.data, "samples": len(arrays), "mm_per_unit": arrays.mm_per_unit,
              "models": [summarise(ev, arrays.labels) for ev in evals]}
    if len(evals) == 2:
        result["wilcoxon"] = wilcoxon_compare(evals[0], evals[1], arrays.labels)
    if widths:
        result["width_response"] = widths
    with open(args.json_out, "w") as f:
        json.dump(result, f, indent=1, allow_nan=True)
    for summary in result["models"]:
        print(f"{summary['name']} on {len(arrays)} vertebrae:")
        for region in ("whole", "body", "arch"):
            print(f"  {region:5s} {_line(summary, region)}")
    _print_body_levels(result)
    if "wilcoxon" in result:
        print("Wilcoxon signed-rank, first model better (one-sided p):")
        for region in ("whole", "body", "arch"):
            w = result["wilcoxon"]["overall"][region]["cd_t_x1e4"]
            p = w["p_a_better"]
            print(f"  CD_t {region:5s}: median diff {w['median_diff']:+.2f}e-4, "
                  f"p = {p:.3g}" if not math.isnan(p) else f"  CD_t {region}: no test")
    _print_width_response(widths)
    if args.report:
        from ..train.report import write_report

        write_report(args.report, arrays, evals)
        print(f"report: {args.report}")
    return 0


def _print_body_levels(result: dict) -> None:
    """Body ASSD per level, every model side by side (with the paired test when there are two)."""
    levels = list(result["models"][0]["per_level"])
    width = max(len(s["name"]) for s in result["models"])  # full names: two multimodal checkpoints must differ
    print(f"body ASSD mm{'':{width - 9}s}" + "  ".join(f"{lv:>6s}" for lv in levels) + "    mean")
    for summary in result["models"]:
        row = [summary["per_level"][lv]["body"]["assd_mm"]["mean"] for lv in levels]
        print(f"  {summary['name']:{width}s} " + "  ".join(f"{v:6.2f}" for v in row)
              + f"  {summary['overall']['body']['assd_mm']['mean']:6.2f}")
    if "wilcoxon" in result:
        w = result["wilcoxon"]["overall"]["body"]["assd_mm"]
        print(f"  body ASSD, first better: median diff {w['median_diff']:+.3f} mm, one-sided p = {w['p_a_better']:.3g} "
              f"(n = {w['n']})")


def _print_width_response(widths: list[dict]) -> None:
    for w in widths:
        stretches = "  ".join(f"x{r['factor']:g} -> x{r['width_ratio']:.3f}" for r in w["stretches"])
        print(f"body width, {w['name']}: truth {w['truth_width_mm']:.1f} mm, completed {w['pred_width_mm']:.1f} mm "
              f"(medians); left-right stretch of the cloud {stretches}: follows {w['follow_mean']:.2f}")


def _head(arrays, n: int):
    import dataclasses

    return dataclasses.replace(
        arrays, partial=arrays.partial[:n], labelmap=arrays.labelmap[:n], complete=arrays.complete[:n],
        labels=arrays.labels[:n], names=arrays.names[:n],
        centers_mm=None if arrays.centers_mm is None else arrays.centers_mm[:n])
