"""Export the completion network (torch.export / ONNX) and check that TensorRT can take it.

Traces the inference module (eval mode, posterior mean, fixed shapes) with torch.export, lowers it to core
ATen, reports the graph size and any operator torch-tensorrt has no converter for
(usx_stream/completion/aten_ops_trt213.json), and optionally writes the program (.pt2) and an ONNX file checked
against eager in ONNX Runtime. Exits 1 when an operator is not convertible or the ONNX output lies more than
0.25 mm from eager's (ASSD of the two clouds as point sets: index-wise, near-ties in the network's kNN and
top-k rankings round differently and reorder points without moving the surface).

MODEL is 'default' (shipped multimodal checkpoint), 'us-only' (shipped US-only checkpoint), 'small' or
'paper' (fresh seeded weights of that configuration), or a checkpoint path. --from-original converts a
checkpoint of the public US-X Complete code (vrcnet_multimodal) and can save it in our format.

Examples:
  usx-stream export --model default --program completion.pt2 --onnx completion.onnx --json export.json
  usx-stream export --model small --batch 5
  usx-stream export --from-original best_cd_t_network.pth --save-checkpoint converted.pt
  usx-stream export --from-original best_cd_t_network.pth --ordered --onnx original.onnx
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._types import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="default | us-only | small | paper | checkpoint path")
    parser.add_argument("--from-original", dest="from_original", metavar="PTH",
                        help="checkpoint of the public US-X Complete code (overrides --model)")
    parser.add_argument("--us-only", action="store_true", help="with --from-original: load as the US-only variant")
    parser.add_argument("--ordered", action="store_true",
                        help="with --from-original: pool with fixed furthest-point prefixes (exportable) instead "
                             "of furthest point sampling (inputs must then come in furthest-point order)")
    parser.add_argument("--save-checkpoint", dest="save_checkpoint", metavar="PT",
                        help="write the model in our format")
    parser.add_argument("--batch", type=positive_int, default=1, help="fixed batch size of the export (default 1)")
    parser.add_argument("--program", metavar="PT2", help="write the exported program (torch.export.save)")
    parser.add_argument("--onnx", metavar="ONNX", help="write an ONNX file and compare ONNX Runtime with eager")
    parser.add_argument("--json", metavar="OUT", help="write the report as JSON")


def _load(args: argparse.Namespace):
    import torch

    from ..completion import checkpoint
    from ..completion.nets import ModelConfig, build_model

    if args.from_original:
        overrides = {"sampling": "ordered"} if args.ordered else {}
        model, cfg = checkpoint.load_original_checkpoint(args.from_original,
                                                         multimodal=False if args.us_only else None, **overrides)
        return model, cfg, f"original checkpoint {args.from_original}"
    if args.model in ("default", "us-only"):
        variant = "multimodal" if args.model == "default" else "us_only"
        model, cfg, _ = checkpoint.load_default(variant)
        return model, cfg, f"shipped {variant} checkpoint"
    if args.model in ("small", "paper"):
        torch.manual_seed(0)
        cfg = ModelConfig.small() if args.model == "small" else ModelConfig.paper()
        return build_model(cfg).eval(), cfg, f"{args.model} configuration, seeded weights"
    model, cfg, _ = checkpoint.load_checkpoint(args.model)
    return model, cfg, f"checkpoint {args.model}"


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import InputError
    from ..completion import checkpoint, export

    try:
        model, cfg, source = _load(args)
    except (FileNotFoundError, ValueError) as e:
        raise InputError(str(e)) from e
    if args.save_checkpoint:
        checkpoint.save_checkpoint(args.save_checkpoint, model, cfg, {"source": source})
    report = {"model": source, "batch": args.batch, "config": cfg.to_dict()}
    try:
        program = export.export_program(model, batch=args.batch)
    except ValueError as e:
        raise InputError(str(e)) from e
    if args.program:
        Path(args.program).parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, args.program)
    core = export.core_aten(program)
    stats = export.graph_stats(core)
    missing = export.unconvertible_ops(core)
    report.update(graph_nodes=stats["nodes"], operators=stats["ops"], unconvertible_ops=missing)
    print(f"{source}: exported graph of {stats['nodes']} nodes, {len(stats['ops'])} operator kinds; "
          + ("all convertible by torch-tensorrt" if not missing else f"NOT convertible: {', '.join(missing)}"))
    ok = not missing
    if args.onnx:
        path = export.export_onnx(model, args.onnx, batch=args.batch)
        agreement = export.onnx_agreement(model, path, batch=args.batch)
        ok = ok and agreement["assd_mm"] <= export.ONNX_ASSD_MM
        report.update(onnx=str(path), onnx_vs_eager=agreement, onnx_tolerance_assd_mm=export.ONNX_ASSD_MM)
        print(f"ONNX Runtime vs eager: surfaces {agreement['assd_mm']:.3f} mm apart (ASSD; tolerance "
              f"{export.ONNX_ASSD_MM:g} mm), Hausdorff {agreement['hausdorff_mm']:.2f} mm, index-wise max "
              f"{agreement['max_abs_unit']:.1e} units -> {path}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0 if ok else 1
