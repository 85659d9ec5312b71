"""``captum-vit export``: a trained explainer of any model to ONNX, optionally a TensorRT engine.

captum-vit export --model synthetic-vit --out out/synthetic-vit-pltx.onnx
captum-vit export --model timm:vit_small_patch16_224 --weights mine.safetensors --explainer run/best.safetensors --out e.onnx
captum-vit export --model synthetic-vit --predict --out out/pe.onnx   # outputs: the map and the logits
captum-vit export --model synthetic-vit --precision fp16 --format tensorrt --out out/e16.onnx
captum-vit export --model synthetic-vit --precision int8 --out out/e8.onnx   # onnxruntime CPU
captum-vit export --model synthetic-vit --method diffmask --out out/synthetic-vit-diffmask.onnx
captum-vit export --model synthetic-vit --out out/e.onnx --triton-repo out/triton

The explainee is any ``--model`` of :mod:`captum_vit.models.spec`; the explainer is
``--explainer`` (pLTX: a registered name or a ``.safetensors``/``.pt`` file such as
``pretrain-ltx``'s ``OUT/best.safetensors``) or ``--gates`` (DiffMask), by default the one
registered for the model's weights fingerprint. ``--predict`` exports a "predict and explain"
graph (:mod:`captum_vit.export.predict_explain`) whose outputs are the map and the explainee's
logits. :func:`check` loads the model and the explainer and checks every option (output path,
precision and format, TensorRT availability) before the export starts; :func:`run` exports,
checks parity and reports each file it wrote.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from captum_vit._cli_common import CLIError, input_file, output_dir, output_file, positive_int, wrote
from captum_vit.models.spec import add_model_arguments, model_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument(
        "--method",
        choices=("pltx", "diffmask"),
        default="pltx",
        help="pltx: the LTX/EEA explainer network; diffmask: the ViT plus its Vision DiffMask gates",
    )
    p.add_argument(
        "--explainer",
        default=None,
        help="pltx: a registered explainer name or a .safetensors/.pt file (default: the one registered for the model)",
    )
    p.add_argument(
        "--gates",
        default=None,
        help="diffmask: a registered gates name or a gates .safetensors file (default: those registered for the model)",
    )
    p.add_argument(
        "--predict", action="store_true", help="also output the model's logits (a predict-and-explain graph)"
    )
    p.add_argument("--layer", type=int, default=-1, help="diffmask: hidden state of the map (default -1, the last)")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="explainer weights (a pretrain-ltx .pt checkpoint or .safetensors) instead of a shipped one",
    )
    p.add_argument("--out", type=Path, required=True, help="output .onnx file")
    p.add_argument("--format", choices=("onnx", "tensorrt"), default="onnx", help="tensorrt: also build an engine")
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default="fp32",
        help="int8: onnxruntime's dynamic quantization of MatMul/Gemm layers, for CPU (not TensorRT)",
    )
    p.add_argument("--opset", type=int, choices=(18, 19, 20), default=20)
    p.add_argument("--min-batch", type=positive_int, default=1, help="TensorRT profile: smallest batch")
    p.add_argument("--opt-batch", type=positive_int, default=8, help="TensorRT profile: batch tuned for")
    p.add_argument(
        "--max-batch", type=positive_int, default=32, help="TensorRT profile and Triton: largest batch (default 32)"
    )
    p.add_argument(
        "--triton-repo",
        type=Path,
        default=None,
        help="also write a Triton Inference Server model repository (config.pbtxt + model) in this folder",
    )


def check(args: argparse.Namespace) -> None:
    """Check the options, load the model and build the module to export; sets ``args.export``.

    Raises
    ------
    CLIError, ValueError, FileNotFoundError
        Conflicting options, an unwritable ``--out``/``--triton-repo``, a missing checkpoint,
        an unknown model or explainer, int8 for a CNN explainer, TensorRT unavailable here.
    """
    output_file(args.out, "--out", (".onnx",))
    if args.triton_repo is not None:
        output_dir(args.triton_repo, "--triton-repo")
    if args.precision == "int8" and args.format == "tensorrt":
        raise CLIError("int8 exports are for onnxruntime; TensorRT needs --precision fp32/fp16")
    if args.explainer is not None and args.checkpoint is not None:
        raise CLIError("--explainer and --checkpoint both name the explainer's weights: pass one")
    if args.method == "diffmask" and (args.explainer or args.checkpoint):
        raise CLIError("--explainer/--checkpoint are pLTX options; use --gates with --method diffmask")
    if args.method == "pltx" and (args.gates or args.layer != -1):
        raise CLIError("--gates/--layer are DiffMask options; add --method diffmask")
    if not args.min_batch <= args.opt_batch <= args.max_batch:
        raise CLIError(
            f"--min-batch, --opt-batch, --max-batch must be in increasing order, got "
            f"{args.min_batch}, {args.opt_batch}, {args.max_batch}"
        )
    if args.format == "tensorrt":
        from captum_vit.export.tensorrt import tensorrt_unavailable_reason

        reason = tensorrt_unavailable_reason()
        if reason is not None:
            raise CLIError(f"--format tensorrt: cannot build engines here: {reason}")
    if args.checkpoint is not None:
        input_file(args.checkpoint, "--checkpoint")
    if args.predict and args.precision != "fp32":
        raise CLIError(f"--predict graphs are exported in fp32; got --precision {args.precision}")

    from captum_vit.models.fingerprint import model_fingerprint
    from captum_vit.models.registry import find_explainer_entry
    from captum_vit.models.vit import is_vit

    explainee = model_from_args(args)
    if args.precision == "int8" and not is_vit(explainee):
        raise CLIError(
            f"--precision int8 quantizes MatMul/Gemm layers and the CNN explainer of {args.model} has none; "
            "use fp32 or fp16"
        )
    if args.method == "diffmask":
        from captum_vit.explainers.registry import load_gates
        from captum_vit.export.explainers import diffmask_export_module

        args.export = diffmask_export_module(load_gates(args.gates, explainee), explainee, args.layer)
    else:
        from captum_vit.explainers.registry import load_ltx_explainer
        from captum_vit.export.explainers import pltx_export_module

        spec = args.checkpoint if args.checkpoint is not None else args.explainer
        if spec is None and find_explainer_entry(model_fingerprint(explainee), "pltx") is None:
            raise CLIError(
                f"no pLTX explainer is registered for --model {args.model} (weights fingerprint "
                f"{model_fingerprint(explainee)}): pass --explainer NAME|FILE, or train one with "
                "`captum-vit pretrain-ltx ... --register NAME`"
            )
        args.export = pltx_export_module(load_ltx_explainer(spec, explainee).eval(), explainee)
    if args.predict:
        from captum_vit.export.predict_explain import predict_explain_module

        args.export = predict_explain_module(*args.export, explainee)


def run(args: argparse.Namespace) -> int:
    from captum_vit.export.onnx_export import ExportParityError, export_onnx
    from captum_vit.export.predict_explain import export_predict_explain

    if getattr(args, "export", None) is None:
        check(args)
    module, meta = args.export
    try:
        if args.predict:
            report = export_predict_explain(module, args.out, meta, opset=args.opset)
        else:
            report = export_onnx(module, args.out, meta, precision=args.precision, opset=args.opset)
    except ExportParityError as e:
        raise CLIError(str(e)) from e
    what = f"{args.method} and logits" if args.predict else args.method
    wrote(report.path, f"{what}, {args.precision}, max |onnx - torch| = {report.max_abs_diff:.2e}")
    if args.format == "tensorrt":
        from captum_vit.export.tensorrt import BatchProfile, build_engine

        try:
            engine = build_engine(
                report.path, BatchProfile(args.min_batch, args.opt_batch, args.max_batch), args.precision
            )
        except (ImportError, RuntimeError, ValueError) as e:
            raise CLIError(f"the ONNX file was written, but no TensorRT engine: {e}") from e
        wrote(engine, "TensorRT engine")
    if args.triton_repo is not None:
        from captum_vit.export.triton_repo import write_triton_repository

        try:
            folder = write_triton_repository(report.path, args.triton_repo, max_batch_size=args.max_batch)
        except ValueError as e:
            raise CLIError(f"the ONNX file was written, but no Triton repository: {e}") from e
        wrote(folder, "Triton model: config.pbtxt and 1/model.onnx")
    return 0
