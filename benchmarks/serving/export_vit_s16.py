"""Export a ViT-S/16 pLTX explainer with random weights (the load test's large explainer).

python -m benchmarks.serving.export_vit_s16 --out /tmp/serving/vit-s16-pltx.onnx

The explainee is ``timm.create_model("vit_small_patch16_224")`` with random weights (nothing is
downloaded); its explainer is built by the library and exported like a shipped one.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output .onnx file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import timm
    import torch

    from captum_vit._cli_common import output_file, wrote
    from captum_vit.explainers import build_explainer
    from captum_vit.export import export_onnx
    from captum_vit.export.explainers import pltx_export_module

    out = output_file(args.out, suffixes=(".onnx",))
    torch.manual_seed(args.seed)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    module, meta = pltx_export_module(build_explainer(vit).eval(), vit)
    report = export_onnx(module, out, meta)
    wrote(report.path, f"ViT-S/16 pLTX explainer, random weights, max |onnx - torch| = {report.max_abs_diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
