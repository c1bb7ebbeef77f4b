"""Grad2VAE's second-order derivatives of the latent code with respect to an encoder layer.

For each latent unit z_i and each sample, h_i = d/dL ( sum_j dz_i/dL_j ), a tensor of the layer's
shape: the Hessian of z_i with respect to the layer L times the all-ones vector, one tensor per
unit, as the paper describes them (Sect. 3, Sect. 4.1, Fig. 3). ``second_derivatives`` computes
them by ``"loop"`` (2*d reverse-mode calls) or ``"vectorized"`` (three calls for all units);
``second_derivatives_closed_form`` needs only first derivatives and is valid ONLY when everything
from L to (mu, logvar) is piecewise linear. All agree up to rounding
(tests/test_second_derivatives.py). With ``create_graph=True`` the result stays in the autograd
graph, so a loss computed from it trains every parameter it depends on; parts of the graph that
do not reach L at second order give zeros. docs/design-notes.md has the derivations, the
companion notebook's reading and where the derivatives are zero.
"""

from __future__ import annotations

import torch
from torch import Tensor

METHODS = ("loop", "vectorized")


def second_derivatives(
    z: Tensor, layer: Tensor, method: str = "vectorized", create_graph: bool = True
) -> Tensor:
    """h of shape (N, d, *layer.shape[1:]): ``[n, i]`` = d/dL_n (sum_j dz_{n,i}/dL_{n,j}).

    ``z``: (N, d), computed from ``layer`` (N, ...), which must require grad. ``create_graph``:
    keep the result differentiable (training); False for evaluation only.
    """
    if method == "loop":
        return second_derivatives_loop(z, layer, create_graph)
    if method == "vectorized":
        return second_derivatives_vectorized(z, layer, create_graph)
    raise ValueError(f"unknown second-derivative method {method!r}; use one of {METHODS}")


def second_derivatives_loop(z: Tensor, layer: Tensor, create_graph: bool = True) -> Tensor:
    per_unit = []
    for i in range(z.shape[1]):
        (g,) = torch.autograd.grad(z[:, i].sum(), layer, create_graph=True, retain_graph=True)
        per_unit.append(_grad_or_zeros(g.sum(), layer, None, create_graph, batched=False))
    return torch.stack(per_unit, dim=1)


def second_derivatives_vectorized(z: Tensor, layer: Tensor, create_graph: bool = True) -> Tensor:
    n, d = z.shape
    w = torch.zeros_like(z, requires_grad=True)
    (g,) = torch.autograd.grad(z, layer, grad_outputs=w, create_graph=True)  # J^T w
    (u,) = torch.autograd.grad(
        g, w, grad_outputs=torch.ones_like(g), create_graph=True
    )  # J 1: (N, d)
    one_hot = torch.eye(d, dtype=z.dtype, device=z.device).unsqueeze(1).expand(d, n, d)
    h = _grad_or_zeros(u, layer, one_hot, create_graph, batched=True)  # (d, N, ...)
    return h.transpose(0, 1)


def _grad_or_zeros(
    output: Tensor, layer: Tensor, grad_outputs, create_graph: bool, batched: bool
) -> Tensor:
    shape = ((grad_outputs.shape[0],) if batched else ()) + tuple(layer.shape)
    if not output.requires_grad:  # no path from layer to output at all: zero curvature
        return layer.new_zeros(shape)
    (h,) = torch.autograd.grad(
        output,
        layer,
        grad_outputs=grad_outputs,
        create_graph=create_graph,
        retain_graph=True,
        allow_unused=True,
        is_grads_batched=batched,
    )
    return layer.new_zeros(shape) if h is None else h


#: methods that need only first derivatives; valid only under the precondition above
CLOSED_FORM_METHODS = ("closed_form", "explicit")


def closed_form_from_jacobian(
    logvar: Tensor, eps: Tensor, g: Tensor, sigma: str = "exp_half_logvar"
) -> Tensor:
    """h (N, d, ...) = 0.25 sigma eps (1.g) g from g = d logvar / dL of shape (N, d, ...), for
    sigma = exp(0.5 logvar); for ``sigma="exp_logvar"`` (z = mu + exp(logvar) eps, the companion
    notebook's) dz_i/dL = dmu_i + sigma_i eps_i g_i, hence h_i = sigma_i eps_i (1.g_i) g_i."""
    n, d = logvar.shape
    if sigma == "exp_logvar":
        coefficient = torch.exp(logvar) * eps * g.sum(dim=tuple(range(2, g.dim())))
    else:
        coefficient = 0.25 * torch.exp(0.5 * logvar) * eps * g.sum(dim=tuple(range(2, g.dim())))
    return coefficient.view(n, d, *([1] * (g.dim() - 2))) * g


def second_derivatives_closed_form(
    logvar: Tensor,
    eps: Tensor,
    layer: Tensor,
    create_graph: bool = True,
    sigma: str = "exp_half_logvar",
) -> Tensor:
    """h of shape (N, d, *layer.shape[1:]), equal to ``second_derivatives(z, layer)`` when the
    path from ``layer`` to (mu, logvar) is piecewise linear and z = mu + exp(0.5 logvar) eps
    (see the module docstring: the caller must guarantee it; ``sigma="exp_logvar"``: z = mu +
    exp(logvar) eps, ``closed_form_from_jacobian``). One batched VJP (a vmap over the
    d one-hot cotangents) instead of the 2d reverse passes of the loop."""
    n, d = logvar.shape
    if not logvar.requires_grad:
        return layer.new_zeros((n, d) + tuple(layer.shape[1:]))
    one_hot = torch.eye(d, dtype=logvar.dtype, device=logvar.device).unsqueeze(1).expand(d, n, d)
    g = _grad_or_zeros(logvar, layer, one_hot, create_graph, batched=True)  # (d, N, ...)
    return closed_form_from_jacobian(logvar, eps, g.transpose(0, 1), sigma)
