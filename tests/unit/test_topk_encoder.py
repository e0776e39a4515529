"""The sparse-backward TopK encoder gives the same outputs and gradients as plain autograd."""

from __future__ import annotations

import pytest
import torch

from mi_crow.mechanistic.sae.modules.base import Sae
from mi_crow.mechanistic.sae.modules.topk import TopKSae
from mi_crow.mechanistic.sae.modules.topk_encoder import topk_linear_encode


def _dense_reference(u: torch.Tensor, w: torch.Tensor, b: torch.Tensor, k: int):
    pre = u @ w.t() + b
    values, indices = torch.topk(pre, k, dim=-1, sorted=False)
    return pre, torch.relu(values), indices


@pytest.mark.parametrize("read_pre", [False, True])
def test_gradients_match_dense_autograd(read_pre: bool) -> None:
    torch.manual_seed(0)
    u0, w0, b0 = torch.randn(33, 12), torch.randn(48, 12), torch.randn(48)
    grads = []
    for fn in (topk_linear_encode, _dense_reference):
        u, w, b = (t.clone().requires_grad_(True) for t in (u0, w0, b0))
        pre, acts, idx = fn(u, w, b, 5)
        loss = (acts * torch.linspace(-1, 2, 5)).sum()
        if read_pre:  # the AuxK path reads the dense pre-activations too
            loss = loss + (pre[:, :7] ** 2).sum()
        loss.backward()
        grads.append((pre.detach(), acts.detach(), idx, u.grad, w.grad, b.grad))
    (pre_a, acts_a, idx_a, *g_a), (pre_b, acts_b, idx_b, *g_b) = grads
    torch.testing.assert_close(pre_a, pre_b)
    order_a, order_b = idx_a.sort(-1), idx_b.sort(-1)
    assert torch.equal(order_a.values, order_b.values)
    torch.testing.assert_close(acts_a.gather(-1, order_a.indices), acts_b.gather(-1, order_b.indices))
    for got, want in zip(g_a, g_b, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_topk_sae_fast_path_matches_generic_forward() -> None:
    torch.manual_seed(1)
    sae = TopKSae(d_in=16, n_latents=64, k=4)
    x = torch.randn(2, 9, 16)
    assert sae._plain_linear() is not None, "the fast path must engage on the default encoder"

    fast = sae(x)
    (fast.x_hat**2).sum().backward()
    fast_grads = {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}
    sae.zero_grad(set_to_none=True)

    slow = Sae.forward(sae, x)
    (slow.x_hat**2).sum().backward()
    slow_grads = {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}

    torch.testing.assert_close(fast.x_hat, slow.x_hat)
    assert fast_grads.keys() == slow_grads.keys() and fast_grads
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, slow_grads[name], rtol=1e-4, atol=1e-5, msg=name)
