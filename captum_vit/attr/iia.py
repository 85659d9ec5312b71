"""Iterated Integrated Attributions (Barkan et al., ICCV 2023; docs/methods.md §5).

IIA integrates along a straight path in input space *and*, nested inside it, along paths in
internal representations: attention maps for a ViT, a feature stage's activations for a CNN.
Every point of the iterated path is one forward and one backward pass; all points of all
examples are laid out as rows and evaluated ``internal_batch_size`` rows at a time (by default
as many as fit a memory budget).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from captum_vit.attr._base import OutputFn, check_baseline
from captum_vit.attr._registry import register_method
from captum_vit.attr._targets import resolve_targets
from captum_vit.attr._vit_common import AttentionAttribution
from captum_vit.kernels._common import accumulation_dtype, fuse_heads
from captum_vit.kernels.rollout import attention_rollout
from captum_vit.models.cnn import CNNAdapter
from captum_vit.models.hooks import count_output_bytes, override_output, record_attention

CNN_REFERENCES = ("paper", "released")


def path_points(n_steps: Sequence[int]) -> Tensor:
    """Interpolation coefficients of every point of the iterated path.

    Level ``k`` with ``n_steps[k] = n > 0`` uses the ``n + 1`` points ``0, 1/n, ..., 1``
    (both ends, as the released code's ``get_interpolated_values``); ``n = 0`` means no
    interpolation at that level (the single point 1).

    Returns
    -------
    Tensor
        ``(P, levels)`` with ``P = prod(n + 1)``; the first level varies slowest.

    Examples
    --------
    >>> path_points([1, 2]).tolist()
    [[0.0, 0.0], [0.0, 0.5], [0.0, 1.0], [1.0, 0.0], [1.0, 0.5], [1.0, 1.0]]
    """
    axes = [torch.linspace(0.0, 1.0, n + 1) if n > 0 else torch.ones(1) for n in n_steps]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


@register_method("iia", model_kinds=("vit", "cnn"))
class IIA(AttentionAttribution):
    """Iterated Integrated Attributions for timm ViTs and ResNet-family CNNs.

    **ViT** (§5.2). The outer level interpolates the (normalised) input from ``baseline``:
    ``x_a = b + a (x - b)``. Each block in ``attention_layers`` is a further, nested level: its
    attention probabilities are replaced by ``c * A`` where ``A`` is what the block computes at
    that point and ``c`` runs over the level's points; ``A`` is held fixed (detached), so it is
    an independent integration variable as in the released code, which feeds it in as a tensor.
    At every point and for every block ``l`` the integrand is ``G_l = (dy_c/dA_l * A_l)^+`` per
    head, ``A_l`` being the substituted attention for interpolated blocks. The mean of ``G_l``
    over all points, averaged over heads, is aggregated by gradient rollout (add the identity,
    row-normalise, multiply blocks 0..L-1) and read at the classifier's row(s).

    * ``attention_layers=(-1,)``: IIA2, input and last block, the released variant (default).
    * ``attention_layers=(-2, -1)``: IIA3, also block L-1, the paper's best (§5.6 issue 2).

    **CNN** (§5.1, §5.3). The nested level interpolates the output ``u`` of the feature stage
    ``stages[feature_layer]`` from the paper's reference ``r`` (the per-channel minimum of ``u``
    over space) to ``u``: ``v = r + c (u - r)``. The integrand is ``dy_c/dv * (v - r)``,
    summed over channels and averaged over all points; measuring activations from the
    reference is what the released code's ``igacts[1:] -= igacts[0]`` intends (the paper's
    exact CNN integrand was not checked against its text, docs/methods.md §5.3). ``cnn_reference="released"``
    reproduces the released code, whose reference is a minimum over a singleton axis (so
    ``r = u`` and the activation path collapses) and whose integrand is ``dy_c/du * ReLU(u)``:
    only the image level remains (§5.3).

    Parameters
    ----------
    model : nn.Module
        A timm ViT (class-token, average or attention pooling; the last reads the rollout at
        the pooling head's probe attention on the real input, mean over heads) or a timm
        ResNet-family CNN.
    n_steps : int or sequence of int
        Interpolation steps per level (``n`` steps = ``n + 1`` points, both ends included;
        0 = no interpolation at that level). One int applies to every level; a sequence
        gives one value per level, input first (ViT: ``1 + len(attention_layers)`` levels,
        CNN: 2). Default 5, the released ViT code's ``ITERATION_STEPS`` (6 points per level,
        36 points for IIA2); the released CNN script uses 10, and the paper reportedly n = 10
        [unverified, docs/methods.md §5.1].
    attention_layers : sequence of int
        ViT blocks whose attention is integrated (negative indices count from the end).
    baseline : float or Tensor
        Input-space reference, in the model's (normalised) input space: a scalar, ``(C,)``,
        ``(C, H, W)`` or ``(1, C, H, W)``. Default 0, the released code's zero (grey) image.
    internal_batch_size : int, optional
        Path points (rows, across examples) per forward/backward pass, as captum's
        ``IntegratedGradients``. ``None`` (default) chooses it from ``memory_budget``: one
        forward of one image measures the bytes of every module's output (an estimate of what
        a backward pass keeps per row; ViT-Ti at 224 px: 62 MB; ViT-S: 123 MB, where the peak
        RSS grows by 80-90 MB per row, so the estimate errs on the safe side), and a pass gets
        as many rows as fit. The result does not depend on it (per-example sums accumulate in
        float64), and neither does the memory on the batch size: the ceiling is per pass.
    memory_budget : float
        Bytes of activations one pass may hold when ``internal_batch_size`` is ``None``
        (default 1 GiB: 16 rows of ViT-Ti or 8 of ViT-S at 224 px; at least one row).
    feature_layer : int
        CNN only: index into the ResNet's four stages. Default -1 (``layer4``), which is
        ``children()[:8]`` of a torchvision ResNet, the released code's
        ``FEATURE_LAYER_NUMBER = 8``.
    cnn_reference : str
        CNN only: ``"paper"`` (default) or ``"released"`` (see above).
    interpolate_mode : str, optional
        Upsampling of the patch/feature map (default bilinear; the released CNN code uses
        bicubic, the ViT code bilinear).

    Notes
    -----
    The target defaults to the prediction on the real input. The released code takes it
    from the first path point, the baseline image, when no label is given (§5.6 issue 3).
    Maps are not min-max normalised; the released code normalises after upsampling.
    Cost: ``P = prod(n_steps + 1)`` forward and backward passes per example (the released
    IIA2 code runs 42 of each, one at a time).

    References
    ----------
    Barkan, Elisha, Asher, Eshel & Koenigstein, "Visual Explanations via Iterated Integrated
    Attributions", ICCV 2023.

    Examples
    --------
    >>> import timm, torch
    >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                         depth=2, img_size=32).eval()
    >>> IIA(vit, n_steps=2).attribute(torch.rand(2, 3, 32, 32), target=[0, 2]).shape
    torch.Size([2, 3, 32, 32])
    >>> cnn = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    >>> IIA(cnn, n_steps=2).attribute(torch.rand(1, 3, 64, 64), return_patch_map=True).shape  # layer4: /32
    torch.Size([1, 2, 2])
    """

    model_kinds = ("vit", "cnn")

    def __init__(
        self,
        model: nn.Module,
        n_steps: int | Sequence[int] = 5,
        attention_layers: Sequence[int] = (-1,),
        baseline: float | Tensor = 0.0,
        internal_batch_size: int | None = None,
        feature_layer: int = -1,
        cnn_reference: str = "paper",
        interpolate_mode: str | None = None,
        memory_budget: float = 2.0**30,
        output_fn: OutputFn | None = None,
    ) -> None:
        super().__init__(model, interpolate_mode, output_fn)
        if isinstance(self.adapter, CNNAdapter):
            n_stages = len(self.adapter.stages)
            if not isinstance(feature_layer, int) or not -n_stages <= feature_layer < n_stages:
                raise ValueError(f"feature_layer must be an int in [{-n_stages}, {n_stages}), got {feature_layer!r}")
            if cnn_reference not in CNN_REFERENCES:
                raise ValueError(f"cnn_reference must be one of {CNN_REFERENCES}, got {cnn_reference!r}")
            self.blocks: tuple[int, ...] = ()
            levels = 2
        else:
            self.blocks = self._check_blocks(attention_layers)
            levels = 1 + len(self.blocks)
        self.n_steps = self._check_steps(n_steps, levels)
        if internal_batch_size is not None and (
            isinstance(internal_batch_size, bool) or not isinstance(internal_batch_size, int) or internal_batch_size < 1
        ):
            raise ValueError(f"internal_batch_size must be None or a positive int, got {internal_batch_size!r}")
        if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float)) or not memory_budget > 0:
            raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
        self.memory_budget = float(memory_budget)
        self.baseline = check_baseline(baseline)
        self.internal_batch_size = internal_batch_size
        self.feature_layer = feature_layer
        self.cnn_reference = cnn_reference

    # ------------------------------------------------------------------ validation
    def _check_blocks(self, layers: Sequence[int]) -> tuple[int, ...]:
        n = self.vit.num_blocks
        if isinstance(layers, int) or not all(isinstance(k, int) and not isinstance(k, bool) for k in layers):
            raise TypeError(f"attention_layers must be a sequence of block indices, got {layers!r}")
        if any(not -n <= k < n for k in layers):
            raise ValueError(f"attention_layers must index blocks in [{-n}, {n}), got {tuple(layers)}")
        blocks = sorted(k % n for k in layers)
        if len(set(blocks)) != len(blocks):
            raise ValueError(f"attention_layers must name distinct blocks, got {tuple(layers)}")
        return tuple(blocks)  # nested in depth order: deeper blocks are inner levels

    @staticmethod
    def _check_steps(n_steps: int | Sequence[int], levels: int) -> tuple[int, ...]:
        steps = (n_steps,) * levels if isinstance(n_steps, int) else tuple(n_steps)
        if len(steps) != levels or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in steps):
            raise ValueError(f"n_steps must be a non-negative int or {levels} non-negative ints, got {n_steps!r}")
        return steps

    def _baseline_for(self, x: Tensor) -> Tensor:
        b = torch.as_tensor(self.baseline, dtype=x.dtype, device=x.device)
        if b.dim() == 1:
            b = b.reshape(1, -1, 1, 1)
        elif b.dim() == 3:
            b = b.unsqueeze(0)
        try:
            fits = b.dim() in (0, 4) and torch.broadcast_shapes(b.shape, x[:1].shape) == x[:1].shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"baseline of shape {tuple(b.shape)} does not fit inputs of shape {tuple(x.shape)}; "
                "expected a scalar, (C,), (C, H, W) or (1, C, H, W)"
            )
        return b

    # ------------------------------------------------------------------- pipeline
    @property
    def cnn(self) -> CNNAdapter:
        assert isinstance(self.adapter, CNNAdapter)
        return self.adapter

    def _rows_per_pass(self, x: Tensor, forward_args: tuple[Any, ...]) -> int:
        """``internal_batch_size``, or the rows that fit ``memory_budget`` (measured on one image)."""
        if self.internal_batch_size is not None:
            return self.internal_batch_size
        explicit = self.vit.explicit_attention() if not isinstance(self.adapter, CNNAdapter) else nullcontext()
        first = torch.zeros(1, dtype=torch.long, device=x.device)
        with torch.no_grad(), explicit, count_output_bytes(self.adapter.model) as counted:
            self._forward(x[:1], self._rows_args(forward_args, first, x.shape[0]))
        return max(1, int(self.memory_budget // max(counted[0], 1)))

    @staticmethod
    def _chunks(n_rows: int, size: int) -> Iterator[slice]:
        for start in range(0, n_rows, size):
            yield slice(start, min(start + size, n_rows))

    @staticmethod
    def _rows_args(forward_args: tuple[Any, ...], ex: Tensor, batch: int) -> tuple[Any, ...]:
        """Expand per-example tensors in ``additional_forward_args`` to the rows (captum's
        convention: tensors with the batch in dim 0 follow the inputs)."""
        return tuple(
            a.index_select(0, ex.to(a.device)) if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == batch else a
            for a in forward_args
        )

    def _patch_map(self, x: Tensor, target: Tensor | None, forward_args: tuple[Any, ...]) -> Tensor:
        if isinstance(self.adapter, CNNAdapter):
            steps = self.n_steps if self.cnn_reference == "paper" else (self.n_steps[0], 0)
            row_fn: Callable[..., Tensor] = self._cnn_rows
        else:
            self._check_readout()
            steps, row_fn = self.n_steps, self._vit_rows
        if target is None or self.output_fn is not None:  # targets were checked against no class count
            with torch.no_grad():  # None: the prediction on the real input, not on the baseline (§5.6 issue 3)
                target = resolve_targets(target, self._forward(x, forward_args))
        target = target.to(x.device)
        points = path_points(steps).to(x)
        batch, n_points = x.shape[0], points.shape[0]
        ex = torch.arange(batch, device=x.device).repeat_interleave(n_points)  # example-major rows
        pt = torch.arange(n_points, device=x.device).repeat(batch)
        base = self._baseline_for(x)
        total: Tensor | None = None
        for rows in self._chunks(batch * n_points, self._rows_per_pass(x, forward_args)):
            e, c = ex[rows], points[pt[rows]]
            xs = base + c[:, :1, None, None] * (x.index_select(0, e) - base)
            out = row_fn(xs, c[:, 1:], target.index_select(0, e), self._rows_args(forward_args, e, batch))
            if total is None:  # float64: the sum hardly depends on how rows are split into passes
                total = out.new_zeros((batch, *out.shape[1:]), dtype=torch.float64)
            # Segment sums over consecutive rows of one example: deterministic, unlike
            # index_add_ with CUDA atomics.
            ids, counts = torch.unique_consecutive(e, return_counts=True)
            for b, part in zip(ids.tolist(), out.split(counts.tolist())):
                total[b] += part.double().sum(dim=0)
        assert total is not None
        mean = (total / n_points).to(accumulation_dtype(x.dtype))
        if isinstance(self.adapter, CNNAdapter):
            return mean
        h, w = self.vit.grid_size((x.shape[-2], x.shape[-1]))
        n, blocks = self.vit.num_prefix_tokens + h * w, self.vit.num_blocks
        cams = mean[:, : blocks * n * n].reshape(batch, blocks, n, n)
        pool_row = mean[:, blocks * n * n :] if mean.shape[1] > blocks * n * n else None
        joint = attention_rollout(cams.transpose(0, 1).unsqueeze(2))  # gradient rollout (§5.2)
        return self._read_rows(joint, (x.shape[-2], x.shape[-1]), pool_row)

    def _vit_rows(self, xs: Tensor, scales: Tensor, target: Tensor, forward_args: tuple[Any, ...]) -> Tensor:
        """``(R, L*N*N [+ N])``: head-mean of ``(dy/dA_l * A_l)^+`` for every block at each row,
        flattened; for average or attention pooling followed by the pool's integrand, the same
        term for the pooling weights ``a``: ``(dy/da * a)^+`` (head-mean of the probe attention's;
        ``<dy/dt_j, t_j>^+`` for the uniform weights over the pooled tokens ``t_j``)."""

        def scaled(col: Tensor) -> Callable[[Tensor], Tensor]:
            # The substituted attention is a leaf: the inner levels' variables are
            # independent of the outer ones, as in the nested integral (§5.1).
            return lambda a: (col.to(a.dtype).reshape(-1, 1, 1, 1) * a.detach()).requires_grad_(True)

        overrides = {blk: scaled(scales[:, k]) for k, blk in enumerate(self.blocks)}
        ro = self.vit.readout
        average = ro.rows is None and not ro.attention_pool
        with record_attention(self.vit, override=overrides, tokens=average) as rec:
            logits = self._forward(xs.requires_grad_(True), forward_args)
            score = logits.gather(1, target[:, None]).sum()
            atts = [a for a in rec.attentions if a is not None]
            pooled = [t for t in (rec.pool, rec.tokens) if t is not None]
            grads = torch.autograd.grad(score, atts + pooled, allow_unused=True)
        cams = [
            fuse_heads((g * a.detach()).clamp(min=0)) if g is not None else a.new_zeros(a[:, 0].shape)
            for a, g in zip(atts, grads)
        ]
        out = torch.stack(cams, dim=1).flatten(1)
        if not pooled:
            return out
        p, g = pooled[0].detach(), grads[-1] if grads[-1] is not None else torch.zeros_like(pooled[0])
        if rec.pool is not None:  # (R, heads, 1, N)
            row = (g * p).clamp(min=0).mean(dim=1)[:, 0]
        else:  # uniform weights a_j = 1/n: (dy/da_j) a_j = <dy/dt_j, t_j> on the pooled tokens
            pooled_tokens = self.vit.readout_weights(p.shape[1], p.device) > 0
            row = torch.where(pooled_tokens, (g * p).sum(-1), 0.0).clamp(min=0)
        return torch.cat([out, row.to(out.dtype)], dim=1)

    def _cnn_rows(self, xs: Tensor, scales: Tensor, target: Tensor, forward_args: tuple[Any, ...]) -> Tensor:
        """``(R, h, w)``: the channel sum of the integrand at each row."""
        released = self.cnn_reference == "released"
        refs: list[Tensor] = []

        def substitute(u: Tensor) -> Tensor:
            u = self.cnn.to_nchw(u.detach())  # Swin's stages are (B, h, w, C)
            if released:
                return self.cnn.from_nchw(u.clone().requires_grad_(True))
            r = u.amin(dim=(2, 3), keepdim=True)  # the paper's per-channel minimum reference
            refs.append(r)
            return self.cnn.from_nchw((r + scales[:, :1, None, None].to(u.dtype) * (u - r)).requires_grad_(True))

        with override_output(self.cnn.stages[self.feature_layer], substitute) as replaced:
            logits = self._forward(xs, forward_args)
            score = logits.gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(score, replaced)
        grad, v = self.cnn.to_nchw(grad), self.cnn.to_nchw(replaced[0].detach())
        integrand = grad * v.clamp(min=0) if released else grad * (v - refs[-1])
        return integrand.sum(dim=1)
