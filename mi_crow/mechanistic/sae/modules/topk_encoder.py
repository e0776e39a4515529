"""Linear encoder + per-row top-k as one autograd step with a sparse backward.

After top-k only ``k`` pre-activations per row receive a gradient, yet autograd would scatter them into a
dense ``(N, n_latents)`` gradient and run two dense matmuls (for the input and for the weight). Here the
backward touches only the selected latents: the input gradient is an embedding-bag over the selected
weight rows and the weight gradient a sparse ``(n_latents, N) @ u`` product. When the pre-activations
themselves get a gradient (the AuxK loss reads them) the dense path is used, so results never change.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class TopKLinearEncode(torch.autograd.Function):
    """``pre = u @ W.T + b``; returns ``pre``, ``relu(topk values)`` and the top-k indices."""

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, k: int) -> Any:
        pre = torch.addmm(bias, u, weight.t())
        values, indices = torch.topk(pre, k, dim=-1, sorted=False)
        acts = F.relu(values)
        ctx.save_for_backward(u, weight, indices, values > 0)
        ctx.mark_non_differentiable(indices)
        ctx.set_materialize_grads(False)
        return pre, acts, indices

    @staticmethod
    def backward(ctx: Any, grad_pre: torch.Tensor | None, grad_acts: torch.Tensor | None, _: Any) -> Any:
        u, weight, indices, positive = ctx.saved_tensors
        n, n_latents = u.shape[0], weight.shape[0]
        g = torch.zeros(indices.shape, dtype=u.dtype, device=u.device) if grad_acts is None else grad_acts * positive
        if grad_pre is not None:
            # Someone else (AuxK) reads the dense pre-activations: fall back to the dense gradient.
            dense = grad_pre.scatter_add(1, indices, g.to(grad_pre.dtype))
            grad_u = dense @ weight if ctx.needs_input_grad[0] else None
            grad_w = dense.t() @ u if ctx.needs_input_grad[1] else None
            grad_b = dense.sum(0) if ctx.needs_input_grad[2] else None
            return grad_u, grad_w, grad_b, None
        flat_idx = indices.reshape(-1)
        grad_u = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_u = F.embedding_bag(indices, weight, per_sample_weights=g.to(weight.dtype), mode="sum")
        if ctx.needs_input_grad[1]:
            rows = torch.arange(n, device=u.device).repeat_interleave(indices.shape[1])
            sparse = torch.sparse_coo_tensor(
                torch.stack([flat_idx, rows]), g.reshape(-1).to(u.dtype), (n_latents, n), check_invariants=False
            )
            grad_w = torch.sparse.mm(sparse, u)
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(n_latents, dtype=g.dtype, device=g.device).index_add_(0, flat_idx, g.reshape(-1))
        return grad_u, grad_w, grad_b, None


def topk_linear_encode(
    u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pre-activations, relu'd top-k values, top-k indices) for ``u @ weight.T + bias``."""
    return TopKLinearEncode.apply(u, weight, bias, k)
