"""``captum-vit export``: a shipped (or saved) explainer to ONNX, optionally a TensorRT engine.

captum-vit export --model synthetic-vit --out out/synthetic-vit-pltx.onnx
captum-vit export --model synthetic-vit --precision fp16 --format tensorrt --out out/e16.onnx
captum-vit export --model synthetic-vit --precision int8 --out out/e8.onnx   # onnxruntime CPU
captum-vit export --model synthetic-vit --method diffmask --out out/synthetic-vit-diffmask.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="synthetic-vit", help="shipped explainee (default synthetic-vit)")
    p.add_argument(
        "--method",
        choices=("pltx", "diffmask"),
        default="pltx",
        help="pltx: the LTX/EEA explainer network; diffmask: the ViT plus its Vision DiffMask gates",
    )
    p.add_argument("--explainer", default=None, help="pltx: shipped explainer name (default: <model>-pltx)")
    p.add_argument(
        "--gates",
        default=None,
        help="diffmask: shipped gates name or gates .safetensors file (default: the model's shipped gates)",
    )
    p.add_argument("--layer", type=int, default=-1, help="diffmask: hidden state of the map (default -1, the last)")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="explainer weights (a pretrain-ltx .pt checkpoint or .safetensors) instead of a shipped one",
    )
    p.add_argument("--out", type=Path, required=True, help="output .onnx path")
    p.add_argument("--format", choices=("onnx", "tensorrt"), default="onnx")
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default="fp32",
        help="int8: onnxruntime's dynamic quantization of MatMul/Gemm layers, for CPU (not TensorRT)",
    )
    p.add_argument("--opset", type=int, default=20)
    p.add_argument("--min-batch", type=int, default=1)
    p.add_argument("--opt-batch", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=32)


def run(args: argparse.Namespace) -> int:
    from captum_vit.attr.ltx import load_explainer
    from captum_vit.export.explainers import pltx_export_module
    from captum_vit.export.onnx_export import ExportParityError, export_onnx
    from captum_vit.models import load_pretrained

    if args.precision == "int8" and args.format == "tensorrt":
        raise SystemExit("captum-vit export: int8 exports are for onnxruntime; TensorRT needs --precision fp32/fp16")
    if args.method == "diffmask" and (args.explainer or args.checkpoint):
        raise SystemExit(
            "captum-vit export: --explainer/--checkpoint are pLTX options; use --gates with --method diffmask"
        )
    if args.method == "pltx" and (args.gates or args.layer != -1):
        raise SystemExit("captum-vit export: --gates/--layer are DiffMask options; add --method diffmask")
    explainee = load_pretrained(args.model)
    try:
        if args.method == "diffmask":
            from captum_vit.attr.diffmask import resolve_gates
            from captum_vit.export.explainers import diffmask_export_module

            module, meta = diffmask_export_module(resolve_gates(explainee, args.gates), explainee, args.layer)
        else:
            spec = args.checkpoint if args.checkpoint is not None else (args.explainer or f"{args.model}-pltx")
            explainer = load_explainer(spec, explainee)
            module, meta = pltx_export_module(explainer.eval(), explainee)
    except (ValueError, FileNotFoundError, TypeError) as e:
        raise SystemExit(f"captum-vit export: {e}") from None
    try:
        report = export_onnx(module, args.out, meta, precision=args.precision, opset=args.opset)
    except (ValueError, ExportParityError) as e:
        raise SystemExit(f"captum-vit export: {e}") from None
    print(f"wrote {report.path} ({args.method}, {args.precision}, max |onnx - torch| = {report.max_abs_diff:.2e})")
    if args.format == "tensorrt":
        from captum_vit.export.tensorrt import BatchProfile, build_engine

        try:
            engine = build_engine(
                report.path, BatchProfile(args.min_batch, args.opt_batch, args.max_batch), args.precision
            )
        except (ImportError, RuntimeError, ValueError) as e:
            raise SystemExit(f"captum-vit export: the ONNX file was written, but no TensorRT engine: {e}") from None
        print(f"wrote {engine}")
    return 0
