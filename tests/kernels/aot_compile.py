"""Compile every Triton kernel ahead of time for an sm_90 (H100) target, without a GPU.

Run as ``python -m tests.kernels.aot_compile`` in a process where ``TRITON_INTERPRET`` is unset
(test_aot_compile.py does): the interpreter parity tests check what the kernels compute, this
checks that the real compiler (Triton frontend, MLIR lowering, ptxas) accepts them. Exit status
1 and the failing kernel's error when one does not compile.
"""

from __future__ import annotations

import sys


def main() -> int:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from captum_vit.kernels import _triton_graph, _triton_mask, _triton_perturbation, _triton_rollout

    def source(fn: object, types: dict[str, str], constexprs: dict[str, object]) -> ASTSource:
        names = fn.arg_names  # type: ignore[attr-defined]
        sig = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in names}
        return ASTSource(fn, sig, constexprs=constexprs)

    f32, i64 = "*fp32", "*i64"
    cases: list[tuple[str, ASTSource]] = []
    for dt in ("*fp32", "*fp16"):
        tm = dict.fromkeys(["img_ptr", "mask_ptr", "out_ptr", "gout_ptr", "gimg_ptr"], dt)
        tm.update(dict.fromkeys(["base_ptr", "mean_ptr", "std_ptr", "gfull_ptr", "ly_ptr", "lx_ptr"], f32))
        tm.update(dict.fromkeys(["y0_ptr", "y1_ptr", "x0_ptr", "x1_ptr"], i64))
        cases.append((f"apply_mask_fwd {dt}", source(_triton_mask.apply_mask_fwd, tm, {"BLOCK": 256})))
        for need in (True, False):
            args = {"BLOCK": 256, "NEED_IMAGES": need}
            cases.append((f"apply_mask_bwd {dt} images={need}", source(_triton_mask.apply_mask_bwd, tm, args)))
        types = {"img_ptr": dt, "rank_ptr": i64, "count_ptr": i64, "base_ptr": dt, "out_ptr": dt}
        cases.append((f"perturbation_fwd {dt}", source(_triton_perturbation.perturbation_fwd, types, {"BLOCK": 256})))
        strides = dict.fromkeys(["s_l", "s_b", "s_h", "s_r", "s_c"], "i64")
        for fusion in range(4):
            types = {"attn_ptr": dt, "fused_ptr": f32, "pmax_ptr": f32, **strides}
            consts = {"FUSION": fusion, "TILE": _triton_graph.TILE, "CHUNK": _triton_graph.CHUNK}
            cases.append(
                (f"fuse_max_kernel {dt} fusion={fusion}", source(_triton_graph.fuse_max_kernel, types, consts))
            )
        types = {"fused_ptr": f32, "pmax_ptr": f32, "in_ptr": dt, "out_ptr": dt, "min_cut": "fp32"}
        consts = {"TILE": _triton_graph.TILE, "CHUNK": _triton_graph.CHUNK, "NUM_BLOCKS_P2": 8}
        cases.append((f"degree_kernel {dt}", source(_triton_graph.degree_kernel, types, consts)))
        for normalize in (True, False):
            consts = {"TILE": _triton_rollout.TILE, "CHUNK": 256, "NORMALIZE": normalize}
            cases.append(
                (
                    f"rollout_step_kernel {dt} normalize={normalize}",
                    source(_triton_rollout.rollout_step_kernel, {"a_ptr": dt, "out_ptr": dt}, consts),
                )
            )
    target = GPUTarget("cuda", 90, 32)
    failed = 0
    for name, src in cases:
        try:
            triton.compile(src, target=target)
            print(f"compiled {name}")
        except Exception as e:  # report every kernel, then fail
            failed += 1
            print(f"FAILED {name}: {e!r}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
